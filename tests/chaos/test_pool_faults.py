"""Warm-pool MapTasks survive the same faults as pod-mode ones (test_faults.py): S3 stopped
for 30 s mid-task, the API server restarted mid-task. Pool tasks have no pods of their own,
so executions are counted from a log every call appends to (pool workers are host processes
on the test cluster), and retries are the executions beyond one per index.

Each asserts: the task ends Succeeded, every index counted exactly once, exactly one result
per index in the store, no pod or finalizer of the task, and the retries spent are reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubemap
import pytest
from chaoskit import (
    NAMESPACE,
    get_task,
    opts,
    report,
    result_objects,
    task_pods,
    wait_finished,
    wait_progress,
)
from faults import LiveCluster, api_ready, wait_until
from kubemap.api.workerpool import WorkerPool
from kubernetes import client

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


@pytest.fixture
def warm_pool(unique: Callable[[str], str]) -> Iterator[WorkerPool]:
    wp = WorkerPool(unique("chaospool"), namespace=NAMESPACE, replicas=3, idle_ttl_seconds=0)
    wp.create()
    try:
        wait_until("3 pool workers ready", lambda: wp.status().ready == 3, 120)
        yield wp
    finally:
        wp.delete()


def logged(log: Path, seconds: float, fn: Callable[[int], int]) -> Callable[[int], int]:
    def run(x: int) -> int:
        time.sleep(seconds)
        value = fn(x)
        with open(log, "a") as out:  # after the work: a call cut short is not an execution
            out.write(f"{x}\n")
        return value

    return run


def executions(log: Path) -> list[int]:
    return sorted(int(x) for x in log.read_text().split()) if log.exists() else []


def check_pool_outcome(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    name: str,
    total: int,
    log: Path,
    *,
    objects_may_overlap: bool = False,
) -> str:
    """Succeeded with each index counted once and in a result object. `objects_may_overlap`
    is for an operator replacement: it loses the leases in flight (the dispatcher keeps them
    in memory), their chunks are offered again while the old holder may still commit its
    own, so objects may overlap there; the overlap is counted in the line, not hidden."""
    body = get_task(custom, name)
    status = body.get("status") or {}
    assert status.get("phase") == "Succeeded", status
    assert status.get("succeeded") == total and status.get("failed") == 0, status
    assert status.get("succeededIndexes") == f"0-{total - 1}", status
    spans = result_objects(body["spec"]["store"]["url"], name)
    covered = sorted(i for start, count in spans for i in range(start, start + count))
    if objects_may_overlap:
        assert set(covered) == set(range(total)), sorted(set(range(total)) - set(covered))
    else:
        assert covered == list(range(total)), (
            f"result objects do not cover each index once: {spans}"
        )
    assert not task_pods(core, name), "a pool task made pods (so none can hold a finalizer)"
    ran = executions(log)
    assert set(ran) == set(range(total)), sorted(set(range(total)) - set(ran))
    overlap = (
        f"{len(covered) - total} indices in two objects (leases lost with the operator), "
        if objects_may_overlap
        else ""
    )
    return (
        f"{name}: Succeeded {total}/{total}, {len(spans)} result objects, {overlap}"
        f"{len(ran)} executions ({len(ran) - total} retried)"
    )


@pytest.mark.timeout(300)
def test_pool_task_survives_s3_stopped_30s(
    cluster: LiveCluster,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    warm_pool: WorkerPool,
    tmp_path: Path,
) -> None:
    log = tmp_path / "calls.log"
    name = unique("pool-s3down")
    fn = logged(log, 0.5, lambda x: x * x)
    run = kubemap.submit(fn, range(60), **opts(name=name, pool=warm_pool.name))
    wait_progress(custom, name, 5)  # as in pod mode: a fault before any success is systematic
    cluster.outage("s3", 30, ready=cluster.s3_ready)
    assert wait_finished(custom, name, 240)["phase"] == "Succeeded"
    line = check_pool_outcome(core, custom, name, 60, log)
    assert run.results() == [x * x for x in range(60)]
    report(f"{line}; S3 stopped for 30 s mid pool task")


@pytest.mark.timeout(300)
def test_pool_task_survives_api_server_restart(
    cluster: LiveCluster,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    warm_pool: WorkerPool,
    tmp_path: Path,
) -> None:
    log = tmp_path / "calls.log"
    name = unique("pool-apirestart")
    fn = logged(log, 0.5, lambda x: -x)
    run = kubemap.submit(fn, range(60), **opts(name=name, pool=warm_pool.name))
    wait_progress(custom, name, 5)  # as in pod mode: a fault before any success is systematic
    cluster.outage("kube-apiserver", 3, ready=lambda: api_ready(core))
    assert wait_finished(custom, name, 240)["phase"] == "Succeeded"
    line = check_pool_outcome(core, custom, name, 60, log)
    assert run.results() == [-x for x in range(60)]
    # A pool task created after the restart is seen and served: the watches came back.
    after_log = tmp_path / "after.log"
    after = unique("pool-after")
    values: list[Any] = kubemap.map(
        logged(after_log, 0.0, lambda x: -x), range(6), **opts(name=after, pool=warm_pool.name)
    )
    assert values == [0, -1, -2, -3, -4, -5]
    check_pool_outcome(core, custom, after, 6, after_log)
    report(f"{line}; API server restarted mid pool task; a pool task created after it ran too")
