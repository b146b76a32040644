"""Warm pools on the test cluster: WorkerPool -> Deployment of workers -> MapTask spec.pool
served through leases -> results in S3. Counts pods (a watch on kubemap.io/pool), executions
(each call appends its input to a file) and results (each index in exactly one object)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import kubemap
import pytest
from e2ekit import (
    NAMESPACE,
    OPERATOR_NAMESPACE,
    OPERATOR_SELECTOR,
    Operator,
    PodWatch,
    get_task,
    opts,
    wait_for,
)
from kubemap.api.workerpool import WorkerPool
from kubemap.stores import open_store
from kubemap.task.data import iter_results
from kubernetes import client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed"),
]


class PoolPods(PodWatch):
    """Every pod of a pool ever seen (a watch from before the pool exists), and those not
    deleted (`live`)."""

    def __init__(self, core: client.CoreV1Api, pool: str) -> None:
        super().__init__(core, selector=f"kubemap.io/pool={pool}")


def ready(wp: WorkerPool, n: int) -> None:
    wait_for(f"pool {wp.name} with {n} ready workers", lambda: wp.status().ready == n)


def counted(log: Path, seconds: float = 0.0) -> Callable[[int], int]:
    def fn(x: int) -> int:
        with open(log, "a") as out:
            out.write(f"{x}\n")
        time.sleep(seconds)
        return 3 * x

    return fn


def executions(log: Path) -> list[int]:
    return sorted(int(x) for x in log.read_text().split()) if log.exists() else []


def result_indices(run: kubemap.MapRun) -> list[int]:
    """Every index of every result object: an index counted twice would show here twice."""
    return sorted(i for i, _ in iter_results(open_store(run.store_url)))


def test_two_tasks_back_to_back_on_one_pool_the_second_starts_no_pod(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    wp = pool(replicas=2, idle_ttl_seconds=0)
    with PoolPods(core, wp.name) as pods:
        ready(wp, 2)
        warm = set(pods.seen)
        logs = [tmp_path / "first.log", tmp_path / "second.log"]
        runs = []
        for log in logs:
            run = kubemap.submit(counted(log), range(60), **opts(name=unique("pt"), pool=wp.name))
            assert run.results() == [3 * x for x in range(60)]
            runs.append(run)
        after = set(pods.seen)
    assert len(warm) == 2 and after == warm  # neither task started a pod
    for log, run in zip(logs, runs, strict=True):
        assert executions(log) == list(range(60))  # every index ran exactly once
        assert result_indices(run) == list(range(60))
        body = get_task(custom, run.name)
        assert body is not None and body["status"]["succeededIndexes"] == "0-59"
        assert not core.list_namespaced_pod(
            NAMESPACE, label_selector=f"kubemap.io/task={run.name}"
        ).items
    wait_for("the pool counts both tasks", lambda: wp.status().tasks_served >= 2, timeout=30)
    assert wp.status().python_version


def test_a_worker_deleted_mid_task_loses_its_chunk_to_another(
    core: client.CoreV1Api,
    operator: Operator,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    wp = pool(replicas=2, idle_ttl_seconds=0)
    ready(wp, 2)
    log = tmp_path / "calls.log"
    run = kubemap.submit(counted(log, 0.1), range(80), **opts(name=unique("pd"), pool=wp.name))
    wait_for("some progress", lambda: run.status().succeeded >= 5 or len(executions(log)) >= 10)
    victims = core.list_namespaced_pod(NAMESPACE, label_selector=f"kubemap.io/pool={wp.name}")
    core.delete_namespaced_pod(victims.items[0].metadata.name, NAMESPACE)
    assert run.results() == [3 * x for x in range(80)]
    assert result_indices(run) == list(range(80))  # each index recorded exactly once
    assert set(executions(log)) == set(range(80))


def test_the_operator_killed_mid_task_loses_nothing(
    operator: Operator,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    wp = pool(replicas=2, idle_ttl_seconds=0)
    ready(wp, 2)
    log = tmp_path / "calls.log"
    run = kubemap.submit(counted(log, 0.1), range(80), **opts(name=unique("po"), pool=wp.name))
    wait_for("some progress", lambda: len(executions(log)) >= 10)
    operator.kill_and_restart()
    assert run.results() == [3 * x for x in range(80)]
    assert result_indices(run) == list(range(80))
    assert run.status().succeeded == 80


def counted_failing(log: Path, bad: frozenset[int]) -> Callable[[int], int]:
    def fn(x: int) -> int:
        with open(log, "a") as out:
            out.write(f"{x}\n")
        if x in bad:
            raise ValueError(f"bad input {x}")
        return 3 * x

    return fn


def test_the_retry_budget_holds_across_an_operator_restart(
    custom: client.CustomObjectsApi,
    operator: Operator,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """retries=1: each bad index runs twice, however the operator restarts in between (the
    retry waits its 10 s backoff; the operator is killed while it waits)."""
    wp = pool(replicas=2, idle_ttl_seconds=0)
    ready(wp, 2)
    log, bad = tmp_path / "calls.log", frozenset({3, 17})
    name = unique("pr")
    run = kubemap.submit(
        counted_failing(log, bad), range(20), **opts(name=name, pool=wp.name, retries=1)
    )

    def counts_recorded() -> bool:
        body = get_task(custom, name) or {}
        return bool((body.get("status") or {}).get("poolFailures"))

    wait_for("the first failures in status.poolFailures", counts_recorded, timeout=120)
    operator.kill_and_restart()
    with pytest.raises(kubemap.MapTaskError) as err:
        run.results()
    assert set(err.value.failures) == bad
    runs = executions(log)
    for index in range(20):
        assert runs.count(index) == (2 if index in bad else 1), (index, runs)
    body = get_task(custom, name) or {}
    assert not body["status"].get("poolFailures")  # nothing left in play once finished


def test_retry_with_a_new_function_runs_on_the_pool_without_a_pod(
    core: client.CoreV1Api,
    operator: Operator,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """MapRun.retry(fn=...) on a pool task: the warm workers run the new function (not the
    one they kept) on the indices without a result; no pod is made for the rerun."""
    wp = pool(replicas=2, idle_ttl_seconds=0)
    ready(wp, 2)
    first_log, second_log, bad = tmp_path / "first.log", tmp_path / "second.log", {4, 9}
    run = kubemap.submit(
        counted_failing(first_log, frozenset(bad)),
        range(12),
        **opts(name=unique("prr"), pool=wp.name, min_success_ratio=0),
    )
    run.wait(timeout=300)
    assert run.status().failed == 2
    rerun = run.retry(fn=counted(second_log))
    rerun.wait(timeout=300)
    assert rerun.results() == [3 * x for x in range(12)]
    assert executions(second_log) == sorted(bad)  # only the missing ones, by the new fn
    assert executions(first_log) == list(range(12))
    assert not core.list_namespaced_pod(
        NAMESPACE, label_selector=f"kubemap.io/task={run.name}"
    ).items


def test_an_idle_pool_scales_to_min_and_back_up(
    core: client.CoreV1Api,
    operator: Operator,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    wp = pool(replicas=2, min_replicas=1, idle_ttl_seconds=3)
    with PoolPods(core, wp.name) as pods:
        # Both pods made; not "both ready": on a loaded machine the 3 s idle TTL can scale
        # the pool down before the second worker is up (seen failing so).
        wait_for("two workers created", lambda: len(pods.seen) >= 2)
        wait_for("scale-down to minReplicas", lambda: wp.status().replicas == 1, timeout=120)
        wait_for("one worker left", lambda: len(pods.live) == 1 and wp.status().ready == 1)
        run = kubemap.submit(
            counted(tmp_path / "calls.log"), range(20), **opts(name=unique("pi"), pool=wp.name)
        )
        assert run.results() == [3 * x for x in range(20)]
        wait_for("back up to replicas", lambda: wp.status().ready == 2 or len(pods.live) == 2)
        assert len(pods.seen) == 3  # two at first, one added back for the task


def _dispatcher_url(apps: client.AppsV1Api) -> str:
    dep = apps.list_namespaced_deployment(OPERATOR_NAMESPACE, label_selector=OPERATOR_SELECTOR)
    env = {e.name: e.value for e in dep.items[0].spec.template.spec.containers[0].env}
    return str(env["KUBEMAP_DISPATCHER_URL"])


PROBE = """
import os, sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1] + "/v1/lease", data=b'{"python": "3.11", "wait": 0}',
    headers={"X-Kubemap-Pool": sys.argv[2], "X-Kubemap-Worker": "intruder",
             "Authorization": "Bearer " + sys.argv[3], "Content-Type": "application/json"})
try:
    code = urllib.request.urlopen(req, timeout=10).status
except urllib.error.HTTPError as exc:
    code = exc.code
with open(os.environ.get("KUBEMAP_TERMINATION_LOG", "/dev/termination-log"), "w") as out:
    out.write(f"status {code}")
sys.exit(0 if code == 401 else 1)
"""


def test_a_pod_outside_the_pool_is_refused(
    api: client.ApiClient,
    core: client.CoreV1Api,
    operator: Operator,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
) -> None:
    wp = pool(replicas=1, idle_ttl_seconds=0)
    ready(wp, 1)
    url = _dispatcher_url(client.AppsV1Api(api))
    restricted = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    names = []
    # No token; a made-up token; and a pod that even wears the pool's label.
    for token, labels in (("", {}), ("0" * 64, {}), ("guess", {"kubemap.io/pool": wp.name})):
        name = unique("intruder")
        names.append(name)
        core.create_namespaced_pod(
            NAMESPACE,
            {
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "probe",
                            "image": "python:3.11-slim",
                            "command": [
                                "python",
                                "-c",
                                PROBE,
                                url,
                                f"{NAMESPACE}/{wp.name}",
                                token,
                            ],
                            "securityContext": restricted,
                        }
                    ],
                },
            },
        )
    for name in names:
        pod = wait_for(
            f"pod {name} finished",
            lambda n=name: (
                p
                if (p := core.read_namespaced_pod(n, NAMESPACE)).status.phase
                in ("Succeeded", "Failed")
                else None
            ),
            timeout=120,
        )
        message = pod.status.container_statuses[0].state.terminated.message
        assert pod.status.phase == "Succeeded" and message == "status 401", message
        core.delete_namespaced_pod(name, NAMESPACE)
    assert wp.status().busy == 0


def test_a_task_from_another_python_minor_is_refused_at_submit(
    custom: client.CustomObjectsApi,
    operator: Operator,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wp = pool(replicas=1, idle_ttl_seconds=0)
    ready(wp, 1)
    pool_python = wait_for("the pool advertises its Python", lambda: wp.status().python_version)
    # The pool's workers are real; the submitting process pretends to be another minor.
    monkeypatch.setattr("kubemap.backends.kubernetes.workerpools.python_minor", lambda: "3.99")
    name = unique("py")
    with pytest.raises(kubemap.ConfigError) as info:
        kubemap.submit(abs, range(3), **opts(name=name, pool=wp.name))
    message = str(info.value)
    assert f"Python {pool_python}" in message and "Python 3.99" in message, message
    assert get_task(custom, name) is None  # refused before anything was created or uploaded
    assert not open_store(os.environ["KUBEMAP_STORE"]).child(name).exists("task.json")
