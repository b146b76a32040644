"""Timing records on the test cluster: a MapTask's pods and a warm pool's workers each leave
one record per slice run in the task's store, named by the pod that ran it, and
`kubemap timeline NAME -n NS` reads them as it reads a local task's. Counts only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import kubemap
import pytest
from e2ekit import NAMESPACE, opts
from kubemap.api.workerpool import WorkerPool
from kubemap.contract import RESULTS_PREFIX, parse_result_key
from kubemap.task.timings import read_timings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed"),
]

SLOW_INDEX = 7


def slow_at(index: int) -> Callable[[int], int]:
    def fn(x: int) -> int:  # a closure: it travels by value to the pods
        time.sleep(0.6 if x == index else 0.005)
        return x + 1

    return fn


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubemap", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=os.environ.copy(),
    )


def test_pods_record_their_slices_and_the_timeline_names_the_slow_pod(
    unique: Callable[[str], str], tmp_path: Path
) -> None:
    run = kubemap.submit(
        slow_at(SLOW_INDEX),
        range(20),
        **opts(name=unique("timeline"), items_per_pod=5, parallelism=4),
    )
    assert run.results() == [x + 1 for x in range(20)]
    task = run.task_store
    records = read_timings(task)
    slices = {parse_result_key(k) for k in task.list(RESULTS_PREFIX)}
    assert len(slices) == 4 and {(t.first, t.count) for t in records} == slices
    assert len(records) == 4 and sum(t.ran for t in records) == 20
    assert all(":" not in t.worker and t.worker.startswith(run.name) for t in records)
    assert all(t.boot is not None for t in records)  # one slice per pod: its start-up is known
    (slow,) = [t for t in records if t.first <= SLOW_INDEX < t.first + t.count]

    printed = cli("timeline", run.name, "-n", NAMESPACE, "--summary", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert f"slowest item:  index {SLOW_INDEX}," in printed.stdout
    assert f"slowest worker: {slow.worker} " in printed.stdout
    drawn = cli("timeline", run.name, "-n", NAMESPACE, "-o", "t.html", cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "t.html").read_text().count('<rect class="slice') == 4


def test_a_warm_pool_records_each_lease_by_its_worker(
    pool: Callable[..., WorkerPool], unique: Callable[[str], str]
) -> None:
    wp = pool(replicas=2, idle_ttl_seconds=0)
    run = kubemap.submit(slow_at(-1), range(200), **opts(name=unique("tlpool"), pool=wp.name))
    assert run.results() == [x + 1 for x in range(200)]
    records = read_timings(run.task_store)
    assert records and sum(t.ran for t in records) == 200
    assert sum(t.succeeded for t in records) == 200
    workers = {t.worker for t in records}
    assert workers <= _pool_pods(wp.name), f"{workers}: not all of them the pool's pods"


def _pool_pods(pool: str) -> set[str]:
    from kubernetes import client, config

    config.load_kube_config()
    pods = client.CoreV1Api().list_namespaced_pod(
        NAMESPACE, label_selector=f"kubemap.io/pool={pool}"
    )
    return {p.metadata.name for p in pods.items}
