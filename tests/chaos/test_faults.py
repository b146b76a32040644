"""Pod-mode MapTasks survive the faults a cluster has: each scenario breaks one thing mid-task
and then checks the whole promise (chaoskit.check_outcome) and prints what it cost.

Bounded: each scenario has its own timeout; together they take a few minutes on 2 cores.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import kubemap
import pytest
from chaoskit import (
    PodLedger,
    check_outcome,
    get_task,
    opts,
    report,
    wait_finished,
    wait_progress,
)
from faults import LiveCluster, api_ready, duplicate_pod, sigkill_operator, wait_until
from kubernetes import client

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


@pytest.mark.timeout(420)
def test_operator_sigkilled_ten_times_during_500_items(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, unique: Callable[[str], str]
) -> None:
    def slow(x: int) -> int:
        time.sleep(0.25)
        return x * 3

    name = unique("kill10")
    rng = random.Random()
    kills = 0
    with PodLedger(core, name) as ledger:
        run = kubemap.submit(slow, range(500), **opts(name=name, parallelism=5, items_per_pod=10))
        wait_progress(custom, name, 10)
        while kills < 10:
            phase = (get_task(custom, name).get("status") or {}).get("phase")
            assert phase not in ("Succeeded", "Failed"), (
                f"the task finished after only {kills} kills: make it longer"
            )
            time.sleep(rng.uniform(0.2, 2.0))
            sigkill_operator(core)
            kills += 1
        wait_finished(custom, name, 300)
        verdict = check_outcome(core, custom, name, 500, ledger)
    assert run.results() == [x * 3 for x in range(500)]
    assert kills >= 10
    report(f"{verdict.line()}; operator SIGKILLed {kills} times")


@pytest.mark.timeout(300)
def test_deleted_worker_pods_are_replaced_without_spending_retries(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, unique: Callable[[str], str]
) -> None:
    def slow(x: int) -> int:
        time.sleep(1.0)
        return x + 7

    name = unique("podkill")
    pods, deleted = 50, set()
    with PodLedger(core, name) as ledger:
        run = kubemap.submit(
            slow, range(100), **opts(name=name, parallelism=10, items_per_pod=2, retries=0)
        )
        deadline = time.monotonic() + 120
        while len(deleted) < pods // 10:  # 10 % of the task's pods, taken while they run
            assert time.monotonic() < deadline, f"only {len(deleted)} running pods to delete"
            running = [p for p in ledger.running_pods() if p not in deleted]
            if running:
                victim = random.choice(running)
                core.delete_namespaced_pod(victim, "default")
                deleted.add(victim)
            time.sleep(0.7)
        wait_finished(custom, name, 240)
        verdict = check_outcome(core, custom, name, 100, ledger)
    assert run.results() == [x + 7 for x in range(100)]
    # retries=0 and still Succeeded: a pod taken away is the platform's doing, not a failure.
    # A pod listed as Running may finish its slice before the delete lands (a loaded machine):
    # its summary says so, and nothing replaces it. Every other deleted pod is replaced once.
    lost = sorted(p for p in deleted if not ledger.finished_work(p))
    assert verdict.retries == len(lost), (verdict.retries, lost, sorted(deleted))
    report(
        f"{verdict.line()}; {len(deleted)} running pods deleted from outside "
        f"({len(deleted) - len(lost)} had just finished), 0 user retries"
    )


@pytest.mark.timeout(300)
def test_s3_stopped_30s_mid_task(
    cluster: LiveCluster,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
) -> None:
    def slow(x: int) -> int:
        time.sleep(1.0)
        return x * x

    name = unique("s3down")
    with PodLedger(core, name) as ledger:
        run = kubemap.submit(slow, range(40), **opts(name=name, parallelism=4, items_per_pod=2))
        wait_progress(custom, name, 4)
        cluster.outage("s3", 30, ready=cluster.s3_ready)
        status = wait_finished(custom, name, 240)
        assert status["phase"] == "Succeeded", status
        verdict = check_outcome(core, custom, name, 40, ledger)
    assert run.results() == [x * x for x in range(40)]
    report(f"{verdict.line()}; S3 stopped for 30 s")


@pytest.mark.timeout(300)
def test_api_server_restarted_mid_task(
    cluster: LiveCluster,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
) -> None:
    def slow(x: int) -> int:
        time.sleep(1.0)
        return -x

    name = unique("apirestart")
    with PodLedger(core, name) as ledger:
        run = kubemap.submit(slow, range(30), **opts(name=name, parallelism=5, items_per_pod=1))
        wait_progress(custom, name, 5)
        cluster.outage("kube-apiserver", 3, ready=lambda: api_ready(core))
        wait_finished(custom, name, 240)
        verdict = check_outcome(core, custom, name, 30, ledger)
    assert run.results() == [-x for x in range(30)]
    # A task created after the restart is seen and run: the MapTask watch came back.
    after = unique("afterrestart")
    with PodLedger(core, after) as ledger2:
        assert kubemap.map(slow, range(4), **opts(name=after, parallelism=4)) == [0, -1, -2, -3]
        check_outcome(core, custom, after, 4, ledger2)
    report(f"{verdict.line()}; API server restarted; a task created after it ran too")


@pytest.mark.timeout(240)
def test_duplicate_pod_for_one_index_counts_once(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, unique: Callable[[str], str]
) -> None:
    def slow(x: int) -> int:
        time.sleep(2.0)
        return x * 11

    name = unique("dup")
    with PodLedger(core, name) as ledger:
        run = kubemap.submit(slow, range(10), **opts(name=name, parallelism=2, items_per_pod=1))
        first = f"{name}-0-0"
        wait_until(f"{first} runs", lambda: first in ledger.running_pods(), 120)
        original = core.read_namespaced_pod(first, "default")
        twin = duplicate_pod(core, original)
        wait_finished(custom, name, 180)
        verdict = check_outcome(core, custom, name, 10, ledger)
    assert twin in ledger.attempts, "the duplicate pod was never seen"
    assert run.results() == [x * 11 for x in range(10)]
    report(f"{verdict.line()}; a duplicate pod ({twin}) ran beside {first}")


@pytest.mark.timeout(300)
def test_node_emulator_stopped_and_restarted(
    cluster: LiveCluster,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
) -> None:
    def slow(x: int) -> int:
        time.sleep(2.0)
        return x - 5

    name = unique("nodeloss")
    with PodLedger(core, name) as ledger:
        run = kubemap.submit(slow, range(30), **opts(name=name, parallelism=5, items_per_pod=1))
        wait_progress(custom, name, 5)
        cluster.outage("node-emulator", 3)  # its pods (the operator too) go with it
        wait_finished(custom, name, 240)
        verdict = check_outcome(core, custom, name, 30, ledger)
    assert run.results() == [x - 5 for x in range(30)]
    report(f"{verdict.line()}; the node emulator stopped with its pods and came back")
