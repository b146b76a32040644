"""Soak: MapTasks back to back for a while, sampling the operator's memory and connections.

    eval "$(tests/cluster/testcluster env)"      # the test cluster, kubemap installed by helm
    .venv/bin/python bench/soak.py --minutes 30 [--items 40] [--every 30] [--csv soak.csv]

Each round submits a function-mode task through the SDK (``--items`` inputs, 4 per pod),
waits for it, checks every result, and deletes the MapTask. Every ``--every`` seconds it prints
one line: the operator's resident memory (VmRSS of its process, read from /proc: on the test
cluster a pod is a host process whose containerID is emulator://<pid>), its open file
descriptors and sockets, its TCP connections to the API server, and the API server's count of
open WATCH requests (apiserver_longrunning_requests, all clients). At the end it compares the
first and last quarter of the samples: memory that keeps climbing shows as growth there.
Exits non-zero if a task failed or a result was wrong, not on the figures (read them).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import kubemap
from kubernetes import client, config

OPERATOR_NAMESPACE = "kubemap-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=kubemap,app.kubernetes.io/component=operator"
NAMESPACE = os.environ.get("BENCH_NAMESPACE", "default")


@dataclass
class Sample:
    t: float
    rounds: int
    pid: int
    rss_mb: float
    fds: int
    sockets: int
    apiserver_conns: int
    apiserver_watches: int


def metrics_text(api: client.ApiClient) -> str:
    response = api.call_api(
        "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False
    )
    raw = response[0] if isinstance(response, tuple) else response
    return str(raw.data.decode())


def operator_pid(core: client.CoreV1Api) -> int:
    for pod in core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=OPERATOR_SELECTOR).items:
        for cs in pod.status.container_statuses or []:
            if cs.state.running is not None and (cs.container_id or "").startswith("emulator://"):
                return int(cs.container_id.removeprefix("emulator://"))
    raise RuntimeError("no running operator pod on the test cluster's node emulator")


def socket_inodes(pid: int) -> tuple[int, set[str]]:
    fds = os.listdir(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return len(fds), inodes


def tcp_conns_to(pid: int, port: int, inodes: set[str]) -> int:
    """Established TCP connections of the process to 127.0.0.1:port (IPv4 and IPv6 tables)."""
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            remote_port = int(f[2].rsplit(":", 1)[1], 16)
            if f[3] == "01" and remote_port == port and f[9] in inodes:
                count += 1
    return count


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def watch_count(api: client.ApiClient) -> int:
    """Open WATCH requests on the API server (every client: emulator, controllers, operator)."""
    text = metrics_text(api)
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_longrunning_requests{") and 'verb="WATCH"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def sample(
    core: client.CoreV1Api, api: client.ApiClient, port: int, t0: float, rounds: int
) -> Sample:
    pid = operator_pid(core)
    fds, inodes = socket_inodes(pid)
    return Sample(
        t=round(time.monotonic() - t0, 1),
        rounds=rounds,
        pid=pid,
        rss_mb=round(rss_mb(pid), 1),
        fds=fds,
        sockets=len(inodes),
        apiserver_conns=tcp_conns_to(pid, port, inodes),
        apiserver_watches=watch_count(api),
    )


def square_plus(x: int) -> int:
    return x * x + 1


def one_round(items: int, store: str | None) -> bool:
    name = f"soak-{uuid.uuid4().hex[:6]}"
    run = kubemap.submit(
        square_plus,
        range(items),
        backend="kubernetes",
        namespace=NAMESPACE,
        store=store,
        name=name,
        parallelism=5,
        items_per_pod=4,
    )
    status = run.wait(timeout=600)
    ok = status.phase.value == "Succeeded" and run.results() == [
        square_plus(x) for x in range(items)
    ]
    client.CustomObjectsApi().delete_namespaced_custom_object(
        "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--csv", type=Path, help="also write the samples to this CSV file")
    args = parser.parse_args()
    config.load_kube_config()
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    port = int(re.sub(r".*:(\d+)/?$", r"\1", api.configuration.host))
    store = os.environ.get("KUBEMAP_STORE")
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    samples: list[Sample] = [sample(core, api, port, t0, 0)]
    print("t_s,rounds,pid,rss_mb,fds,sockets,apiserver_conns,apiserver_watches", flush=True)
    print(",".join(str(v) for v in asdict(samples[0]).values()), flush=True)
    rounds = failures = 0
    next_sample = t0 + args.every
    while time.monotonic() < end:
        if not one_round(args.items, store):
            failures += 1
            print(f"round {rounds}: FAILED", file=sys.stderr, flush=True)
        rounds += 1
        if time.monotonic() >= next_sample:
            samples.append(sample(core, api, port, t0, rounds))
            print(",".join(str(v) for v in asdict(samples[-1]).values()), flush=True)
            next_sample += args.every
    samples.append(sample(core, api, port, t0, rounds))
    if args.csv:
        with args.csv.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(asdict(samples[0])))
            writer.writeheader()
            writer.writerows(asdict(s) for s in samples)
    quarter = max(1, len(samples) // 4)
    first, last = samples[:quarter], samples[-quarter:]
    print(f"\n{rounds} tasks of {args.items} items in {args.minutes:g} min, {failures} failed")
    for field in ("rss_mb", "fds", "sockets", "apiserver_conns", "apiserver_watches"):
        a = statistics.median(getattr(s, field) for s in first)
        b = statistics.median(getattr(s, field) for s in last)
        peak = max(getattr(s, field) for s in samples)
        print(f"{field:18} first quarter {a:8.1f}  last quarter {b:8.1f}  peak {peak:8.1f}")
    restarts = len({s.pid for s in samples}) - 1
    print(f"operator restarts during the soak: {restarts}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
