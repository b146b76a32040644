"""kubemap.map / submit through the local backend against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import functools
import socket
import time
from pathlib import Path

import kubemap
import pytest
from kubemap.resources.maptask import Phase
from kubemap.stores import open_store
from kubemap.task import data as taskdata

pytestmark = pytest.mark.timeout(120)


def cube(x: int) -> int:
    return x * x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise KeyError(f"no such thing: {x}")
    return x


def flaky(marker_dir: str, x: int) -> int:
    marker = Path(marker_dir) / f"seen-{x}"
    if x % 4 == 1 and not marker.exists():
        marker.write_text("1")
        raise TimeoutError(f"first try of {x}")
    return -x


def test_map_on_s3_keeps_order_and_layout(s3_store_url: str) -> None:
    run = kubemap.submit(cube, (x for x in range(300)), store=s3_store_url, parallelism=2)
    assert run.results() == [x**3 for x in range(300)]
    assert run.store_url == f"{s3_store_url}/{run.name}"
    keys = set(open_store(run.store_url).list())
    assert {"fn.pkl", "inputs.bin", "inputs.idx", "task.json"} <= keys
    assert any(k.startswith("results/") for k in keys)
    assert kubemap.map(cube, range(5), store=s3_store_url, items_per_pod=2) == [0, 1, 8, 27, 64]


def test_retries_on_s3(s3_store_url: str, tmp_path: Path) -> None:
    fn = functools.partial(flaky, str(tmp_path))
    assert kubemap.map(fn, range(12), store=s3_store_url, retries=2) == [-x for x in range(12)]


def test_failure_on_s3_has_traceback_and_partial_results(s3_store_url: str) -> None:
    run = kubemap.submit(fail_on_three, range(6), store=s3_store_url, items_per_pod=6)
    with pytest.raises(kubemap.MapTaskError) as info:
        run.results()
    assert info.value.failures[3].type == "KeyError"
    assert "fail_on_three" in info.value.failures[3].traceback
    # fail-fast (the default ratio, no retry): index 3 decides the task, so its slice
    # stops there and 4-5 are not run
    assert run.results(partial=True) == [0, 1, 2, None, None, None]
    assert list(info.value.not_run) == [4, 5]
    assert run.status().phase is Phase.FAILED
    assert 3 not in taskdata.succeeded_indexes(open_store(run.store_url))


def test_unreachable_store_names_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once we leave: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    started = time.perf_counter()
    with pytest.raises(kubemap.StoreError) as info:
        kubemap.map(cube, [1, 2], store="s3://nobucket/prefix")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert time.perf_counter() - started < 30
