"""A WorkerPool in a Kueue queue, against the real Kueue manager of the test cluster
(``tests/cluster/testcluster up --kueue``); skipped, saying so, on a cluster without Kueue.

A ClusterQueue of 2 CPUs and a LocalQueue; a pool of 6 workers at 500m in that queue. A pod
watch counts what Kueue did to the pool's pods: every one created gated, never more than 4
admitted at once, 2 waiting; the pool's status (and `kubectl get workerpools`, and
`kubemap pool list`) says 4 admitted, 2 waiting. A task on the pool finishes with every result
exactly once (each call appends its input to a file; each index is in one result object).
Scaling in to 4 leaves nothing waiting. A pool naming a LocalQueue that does not exist is
refused by the SDK, and the operator's status says so for one applied as YAML.

    KUBEMAP_TESTCLUSTER_STATE=... tests/cluster/testcluster up --kueue
    eval "$(tests/cluster/testcluster env)"
    PATH="$(tests/tools/kube-tools):$PATH" .venv/bin/pytest -m e2e tests/e2e/test_kueue_workerpool.py
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubemap
import pytest
from e2ekit import NAMESPACE, REPO, Operator, kubectl, opts, wait_for
from kubemap.api.workerpool import WorkerPool
from kubemap.errors import ConfigError
from kubemap.stores import open_store
from kubemap.task.data import iter_results
from kubernetes import client

sys.path.insert(0, str(REPO / "tests" / "cluster"))
import kueuekit
from kueuekit import PodTally, Queue, gated

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed"),
]

CPU_QUOTA = "2"
WORKER_CPU = {"requests": {"cpu": "500m"}}
REPLICAS = 6
FITS = 4  # 2 CPUs / 500m


@pytest.fixture(scope="module")
def queue(api: client.ApiClient) -> Iterator[Queue]:
    """A ResourceFlavor, a ClusterQueue of 2 CPUs and a LocalQueue in the test namespace."""
    reason = kueuekit.kueue_missing(api)
    if reason:
        pytest.skip(reason)
    import secrets

    q = kueuekit.create_queue(
        api, NAMESPACE, cpu=CPU_QUOTA, local_queue=f"lq-{secrets.token_hex(3)}"
    )
    yield q
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        kueuekit.GROUP, kueuekit.VERSION, NAMESPACE, "localqueues", q.local_queue
    )
    kueuekit.delete_queue(api, q)


def counted(log: Path) -> Callable[[int], int]:
    def fn(x: int) -> int:
        with open(log, "a") as out:
            out.write(f"{x}\n")
        return 3 * x

    return fn


def get_columns(name: str) -> dict[str, str]:
    """The row of `kubectl get workerpools NAME`, by column header."""
    out = subprocess.run(
        [kubectl(), "get", "workerpools", name, "-n", NAMESPACE],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    return dict(zip(out[0].split(), out[1].split(), strict=False))


def test_a_pool_of_6_under_a_2_cpu_quota_runs_4_reports_2_waiting_and_serves_tasks(
    api: client.ApiClient,
    core: client.CoreV1Api,
    operator: Operator,
    queue: Queue,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = unique("qpool")
    with PodTally(api, NAMESPACE, label_selector=f"kubemap.io/pool={name}") as tally:
        # The fixture's factory makes names itself: make this one by hand, delete it after.
        wp = WorkerPool(
            name, namespace=NAMESPACE, replicas=REPLICAS, idle_ttl_seconds=0,
            queue=queue.local_queue, resources=WORKER_CPU,
        ).create()  # fmt: skip
        try:
            wait_for(
                "pool status: 4 admitted, 2 waiting",
                lambda: (wp.status().admitted, wp.status().waiting) == (FITS, REPLICAS - FITS),
            )
            wait_for("4 workers ready", lambda: wp.status().ready == FITS)
            assert kueuekit.cq_counts(api, queue) == (FITS, REPLICAS - FITS)
            pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"kubemap.io/pool={name}")
            waiting = [p for p in pods.items if gated(p)]
            assert len(waiting) == REPLICAS - FITS
            for p in waiting:  # gated: on no node, and the scheduler says why
                assert not p.spec.node_name and p.status.phase == "Pending"
                scheduled = {c.type: c for c in p.status.conditions or []}["PodScheduled"]
                assert (scheduled.status, scheduled.reason) == ("False", "SchedulingGated")
            row = get_columns(name)
            assert (row["ADMITTED"], row["WAITING"]) == (str(FITS), str(REPLICAS - FITS)), row
            listed = subprocess.run(
                [str(REPO / ".venv" / "bin" / "kubemap"), "pool", "list", "-n", NAMESPACE],
                capture_output=True, text=True, check=True,
            ).stdout.splitlines()  # fmt: skip
            header = listed[0].split()
            mine = next(line.split() for line in listed if line.split()[0] == name)
            assert (mine[header.index("ADMITTED")], mine[header.index("WAITING")]) == ("4", "2")

            # A task on the pool: every index run once, every result once.
            log = tmp_path / "calls.log"
            total = 200
            run = kubemap.submit(counted(log), range(total), **opts(name=unique("qt"), pool=name))
            assert run.results() == [3 * x for x in range(total)]
            indices = sorted(i for i, _ in iter_results(open_store(run.store_url)))
            assert indices == list(range(total))
            calls = sorted(int(x) for x in log.read_text().split())
            assert calls == list(range(total)), "an index ran twice or never"

            # Scale in to 4: the waiting workers go first, the quota holds the rest.
            wp.scale(FITS)
            wait_for(
                "pool status: 4 admitted, 0 waiting",
                lambda: (wp.status().admitted, wp.status().waiting) == (FITS, 0),
            )
            wait_for(
                "the queue: 4 admitted, 0 pending",
                lambda: kueuekit.cq_counts(api, queue) == (FITS, 0),
            )
            seen = tally.snapshot()
            assert seen["gated at creation"] == REPLICAS, seen
            assert seen["not gated at creation"] == [], seen
            assert seen["max admitted at once"] == FITS, seen
            assert seen["bound while gated"] == [], seen
            print(f"\nkueue pool counts: {seen}, results {len(indices)}/{total} once each")
        finally:
            wp.delete(missing_ok=True)
    wait_for("the quota is free again", lambda: kueuekit.cq_counts(api, queue) == (0, 0))


def test_a_pool_in_a_queue_that_does_not_exist_is_refused_or_said_in_its_status(
    custom: client.CustomObjectsApi,
    operator: Operator,
    queue: Queue,
    unique: Callable[[str], str],
) -> None:
    name = unique("nq")
    with pytest.raises(ConfigError) as refused:
        WorkerPool(name, namespace=NAMESPACE, queue="no-such-queue", resources=WORKER_CPU).create()
    message = str(refused.value)
    assert "'no-such-queue'" in message and f"kubectl get localqueues -n {NAMESPACE}" in message
    assert WorkerPool(name, namespace=NAMESPACE).get() is None  # nothing was made

    # Applied as YAML (no SDK to refuse it): the operator's status names the queue.
    body: dict[str, Any] = {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "queueName": "no-such-queue", "resources": WORKER_CPU},
    }
    custom.create_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "workerpools", body)
    wp = WorkerPool(name, namespace=NAMESPACE)
    try:
        said = wait_for(
            "the pool's status names the missing queue",
            lambda: "no-such-queue" in (wp.status().message or "") and wp.status().message,
            timeout=60,
        )
        assert f"kubectl get localqueues -n {NAMESPACE}" in said
    finally:
        wp.delete(missing_ok=True)


def test_without_kueue_a_pool_in_a_queue_is_refused_and_runs_no_worker(
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    unique: Callable[[str], str],
) -> None:
    """The same pool on a cluster without Kueue: the queue label would be ignored (and the
    quota with it), so the SDK refuses it and the operator starts no worker for one applied
    as YAML."""
    if kueuekit.kueue_missing(api) is None:
        pytest.skip("Kueue is installed here: this test is for a cluster without it")
    name = unique("nk")
    with pytest.raises(ConfigError) as refused:
        WorkerPool(name, namespace=NAMESPACE, queue="batch", resources=WORKER_CPU).create()
    assert "localqueues.kueue.x-k8s.io" in str(refused.value)
    body: dict[str, Any] = {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {"replicas": 2, "queueName": "batch", "resources": WORKER_CPU},
    }
    custom.create_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "workerpools", body)
    wp = WorkerPool(name, namespace=NAMESPACE)
    try:
        said = wait_for(
            "the pool's status says Kueue is missing",
            lambda: "Kueue is not installed" in (wp.status().message or "") and wp.status().message,
            timeout=60,
        )
        assert "'batch'" in said and "no worker runs" in said
        assert not core.list_namespaced_pod(
            NAMESPACE, label_selector=f"kubemap.io/pool={name}"
        ).items
    finally:
        wp.delete(missing_ok=True)
