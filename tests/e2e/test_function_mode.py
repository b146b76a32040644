"""Function mode through the SDK: submit -> MapTask -> operator -> worker pods -> S3 -> results."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import kubemap
import pytest
from e2ekit import NAMESPACE, Operator, PodWatch, get_task, opts, task_pods
from kubernetes import client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed"),
]


def test_map_runs_on_the_cluster_within_parallelism(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    unique: Callable[[str], str],
) -> None:
    def slow_square(x: int) -> int:
        time.sleep(0.5)
        return x * x

    name = unique("squares")
    with PodWatch(core, name) as pods:
        started = time.monotonic()
        run = kubemap.submit(
            slow_square, range(12), **opts(name=name, parallelism=3, items_per_pod=2)
        )
        assert run.name == name
        status = run.wait(timeout=300)
        elapsed = time.monotonic() - started
        results = run.results()
    assert status.phase.value == "Succeeded" and results == [x * x for x in range(12)]
    assert pods.seen == {f"{name}-{i}-0" for i in range(0, 12, 2)}, (
        pods.seen
    )  # one pod per chunk, none twice
    assert 1 <= pods.most_active <= 3
    body = get_task(custom, name)
    assert body is not None and body["status"]["succeededIndexes"] == "0-11"
    print(
        f"\n12 items, 6 pods, parallelism 3: {elapsed:.1f}s end to end; most pods at once: {pods.most_active}"
    )


def test_flaky_index_is_retried(
    operator: Operator,
    unique: Callable[[str], str],
    custom: client.CustomObjectsApi,
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o777)  # the pods are processes on this machine: they count their calls here
    calls = str(tmp_path)

    def flaky(x: int) -> int:
        with open(os.path.join(calls, str(x)), "a") as out:
            out.write("x")
        if x == 3 and os.environ.get("KUBEMAP_ATTEMPT") == "0":
            raise RuntimeError("first attempt of index 3 fails")
        return x + 100

    name = unique("flaky")
    results = kubemap.map(flaky, range(5), **opts(name=name, retries=1, parallelism=5))
    assert results == [100, 101, 102, 103, 104]
    counted = {x: len((tmp_path / str(x)).read_text()) for x in range(5)}
    assert counted == {0: 1, 1: 1, 2: 1, 3: 2, 4: 1}  # index 3 really ran a second time
    body = get_task(custom, name)
    assert body is not None and body["status"]["failed"] == 0 and body["status"]["succeeded"] == 5
    assert body["status"]["retries"] == 1


def test_failing_index_reports_its_traceback(
    operator: Operator,
    unique: Callable[[str], str],
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    def picky(x: int) -> int:
        if x == 2:
            raise ValueError(f"cannot take {x}")
        return x

    name = unique("picky")
    with pytest.raises(kubemap.MapTaskError) as info:
        kubemap.map(picky, range(4), **opts(name=name, parallelism=4))
    failure = info.value.failures[2]
    assert failure.type == "ValueError" and "cannot take 2" in failure.message
    assert "raise ValueError" in failure.traceback
    body = get_task(custom, name)
    assert (
        body is not None
        and body["status"]["phase"] == "Failed"
        and body["status"]["failedIndexes"] == "2"
    )
    reasons = {
        e.reason
        for e in core.list_namespaced_event(
            NAMESPACE, field_selector=f"involvedObject.name={name}"
        ).items
    }
    assert "IndexFailed" in reasons, reasons


def test_cancel_stops_the_run(
    operator: Operator,
    unique: Callable[[str], str],
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    def sleepy(x: int) -> int:
        time.sleep(60)
        return x

    name = unique("sleepy")
    run = kubemap.submit(sleepy, range(6), **opts(name=name, parallelism=2))
    deadline = time.monotonic() + 60
    while run.status().active < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    run.cancel()
    status = run.wait(timeout=60)
    assert status.phase.value == "Cancelled"
    with pytest.raises(kubemap.CancelledError):
        run.results()
    deadline = time.monotonic() + 60
    while task_pods(core, name):
        assert time.monotonic() < deadline, "pods of a cancelled task were not removed"
        time.sleep(0.5)


def test_operator_restart_mid_run_counts_every_index_once(
    operator: Operator,
    unique: Callable[[str], str],
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    def steady(x: int) -> int:
        time.sleep(1.5)
        return -x

    name = unique("restart")
    with PodWatch(core, name) as pods:
        run = kubemap.submit(steady, range(16), **opts(name=name, parallelism=4, items_per_pod=1))
        deadline = time.monotonic() + 120
        while run.status().succeeded < 4:
            assert time.monotonic() < deadline, "no progress before the restart"
            time.sleep(0.3)
        operator.kill_and_restart()
        status = run.wait(timeout=300)
        results = run.results()
    assert status.phase.value == "Succeeded" and status.succeeded == 16
    assert results == [-x for x in range(16)]
    body = get_task(custom, name)
    assert (
        body is not None
        and body["status"]["succeededIndexes"] == "0-15"
        and body["status"]["succeeded"] == 16
    )
    # Every index ran in exactly one pod: the restarted operator re-created nothing.
    assert pods.seen == {f"{name}-{i}-0" for i in range(16)}, sorted(pods.seen)
    assert pods.most_active <= 4


def test_repeated_operator_kills_during_retries_lose_and_repeat_nothing(
    operator: Operator,
    unique: Callable[[str], str],
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    def every_fifth_flaky(x: int) -> int:
        time.sleep(0.5)
        if x % 5 == 0 and os.environ.get("KUBEMAP_ATTEMPT") == "0":
            raise RuntimeError(f"index {x} fails its first attempt")
        return x * 10

    name = unique("chaos")
    with PodWatch(core, name) as pods:
        run = kubemap.submit(
            every_fifth_flaky,
            range(20),
            **opts(name=name, parallelism=5, retries=1, items_per_pod=1),
        )
        for _ in range(3):
            time.sleep(4)
            operator.kill_and_restart()
        status = run.wait(timeout=300)
        results = run.results()
    assert status.phase.value == "Succeeded" and status.succeeded == 20 and status.failed == 0
    assert results == [x * 10 for x in range(20)]
    expected = {f"{name}-{i}-0" for i in range(20)} | {f"{name}-{i}-1" for i in range(0, 20, 5)}
    assert pods.seen == expected, sorted(pods.seen ^ expected)
    assert pods.most_active <= 5
