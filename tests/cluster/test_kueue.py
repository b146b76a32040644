"""Proof that Kueue's manager on the test cluster admits plain pods and Deployments by quota.

Needs a cluster started with Kueue (``tests/cluster/testcluster up --kueue``) and KUBECONFIG
(``eval "$(tests/cluster/testcluster env)"``); skipped otherwise. A ResourceFlavor, a
ClusterQueue of 2 CPUs and a LocalQueue; pods of 500m labelled with the queue. A pod watch
counts what Kueue did: every labelled pod is created gated (``kueue.x-k8s.io/admission``), at
most 4 are ungated (admitted) and unfinished at any moment, no gated pod is ever bound to a
node, and the gated ones are admitted as admitted ones finish. With preemption on, a
higher-priority pod gets its quota from a running one, which Kueue marks (TerminationTarget)
and deletes before it admits the newcomer.

The pods' processes run on this host (the node emulator), so a test ends a pod by creating
the file its command waits for: nothing depends on how long anything takes.

    .venv/bin/pytest -m e2e tests/cluster/test_kueue.py
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kueuekit  # noqa: E402
from kueuekit import GROUP, QUEUE_LABEL, VERSION, PodTally, Queue, gated  # noqa: E402

CPU_QUOTA = "2"
POD_CPU = "500m"
FITS = 4  # 2 CPUs / 500m
TIMEOUT = 180.0

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip('needs KUBECONFIG: eval "$(tests/cluster/testcluster env)"')
    from kubernetes import config

    with config.new_client_from_config(config_file=os.environ["KUBECONFIG"]) as client:
        reason = kueuekit.kueue_missing(client)
        if reason:
            pytest.skip(reason)
        yield client


def _wait(what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {timeout:.0f}s")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def queue(api: Any) -> Iterator[Queue]:
    """A ResourceFlavor, a ClusterQueue of 2 CPUs and a LocalQueue in a fresh namespace."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    namespace = f"tc-kueue-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    q = kueuekit.create_queue(api, namespace, cpu=CPU_QUOTA)
    yield q
    core.delete_namespace(namespace)
    _wait(
        f"namespace {namespace} is gone (Kueue removes its pods' finalizers)",
        lambda: not any(n.metadata.name == namespace for n in core.list_namespace().items),
    )
    kueuekit.delete_queue(api, q)


@pytest.fixture
def tally(api: Any, queue: Queue) -> Iterator[PodTally]:
    with PodTally(api, queue.namespace) as seen:
        yield seen


def _pod(
    name: str, queue: str, release_dir: Path, priority_class: str | None = None
) -> dict[str, Any]:
    """A 500m pod in the queue that runs until the file <release_dir>/<its name> exists."""
    wait = f'while [ ! -e "{release_dir}/$POD_NAME" ]; do sleep 0.2; done'
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {QUEUE_LABEL: queue, "test": "kueue-pods"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["sh", "-c", wait],
                    "env": [
                        {
                            "name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        }
                    ],
                    "resources": {"requests": {"cpu": POD_CPU}},
                }
            ],
            **({"priorityClassName": priority_class} if priority_class else {}),
        },
    }


def test_plain_pods_are_gated_and_admitted_within_the_quota(
    api: Any, queue: Queue, tally: PodTally, tmp_path: Path
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    total = 2 * FITS
    names = [f"pod-{i}" for i in range(total)]
    for name in names:
        made = core.create_namespaced_pod(queue.namespace, _pod(name, queue.local_queue, tmp_path))
        # The webhook's mutation is in the create response itself.
        assert gated(made), made.spec

    # Kueue has looked at every workload: 4 admitted, 4 pending for quota.
    _wait("4 workloads admitted, 4 pending", lambda: kueuekit.cq_counts(api, queue) == (FITS, FITS))
    _wait("4 admitted pods running", lambda: len(tally.names("running")) == FITS)
    seen = tally.snapshot()
    assert seen["gated at creation"] == total, seen
    assert seen["admitted"] == FITS, seen
    assert seen["max admitted at once"] == FITS, seen
    pending = [
        p
        for p in core.list_namespaced_pod(queue.namespace).items
        if p.metadata.name not in tally.names("admitted")
    ]
    assert len(pending) == FITS
    for pod in pending:  # gated: Pending, on no node, and Kueue says why
        assert pod.status.phase == "Pending" and not pod.spec.node_name, pod.status
        assert gated(pod)

    # Two admitted pods finish: two gated ones take their quota.
    first = sorted(tally.names("admitted"))[:2]
    for name in first:
        (tmp_path / name).touch()
    _wait("6 pods admitted", lambda: len(tally.names("admitted")) == FITS + 2)
    assert set(first) <= tally.names("finished")

    for name in names:  # the rest finish as they come
        (tmp_path / name).touch()
    _wait("every pod admitted and finished", lambda: len(tally.names("finished")) == total)
    _wait(
        "every pod Succeeded",
        lambda: all(
            p.status.phase == "Succeeded"
            for p in core.list_namespaced_pod(
                queue.namespace, label_selector="test=kueue-pods"
            ).items
        ),
    )
    seen = tally.snapshot()
    assert seen["admitted"] == total, seen
    assert seen["max admitted at once"] == FITS, seen
    assert seen["bound while gated"] == [], seen
    assert seen["not gated at creation"] == [], seen
    _wait("the quota is free again", lambda: kueuekit.cq_counts(api, queue) == (0, 0))


def _deployment(name: str, queue: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        # The queue label on the Deployment: Kueue's webhook copies it to the pod template.
        "metadata": {"name": name, "labels": {QUEUE_LABEL: queue}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "worker",
                            "image": "busybox",
                            "command": ["sh", "-c", "exec sleep 3600"],
                            "resources": {"requests": {"cpu": POD_CPU}},
                        }
                    ],
                },
            },
        },
    }


def test_deployment_pods_are_admitted_one_by_one_within_the_quota(
    api: Any, queue: Queue, tally: PodTally
) -> None:
    from kubernetes import client

    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    made = apps.create_namespaced_deployment(
        queue.namespace, _deployment("workers", queue.local_queue, FITS + 2)
    )
    assert made.spec.template.metadata.labels.get(QUEUE_LABEL) == queue.local_queue

    def pods() -> list[Any]:
        return list(core.list_namespaced_pod(queue.namespace, label_selector="app=workers").items)

    # Each pod is its own workload: 4 admitted and running, 2 gated.
    _wait("4 workloads admitted, 2 pending", lambda: kueuekit.cq_counts(api, queue) == (FITS, 2))
    _wait(
        "4 worker pods running",
        lambda: len(tally.names("running") & {p.metadata.name for p in pods()}) == FITS,
    )
    seen = tally.snapshot()
    assert seen["gated at creation"] == FITS + 2, seen
    assert seen["admitted"] == FITS, seen
    waiting = [p for p in pods() if gated(p)]
    assert len(waiting) == 2 and all(not p.spec.node_name for p in waiting)
    workloads = custom.list_namespaced_custom_object(GROUP, VERSION, queue.namespace, "workloads")
    owners = {
        ref["name"]
        for w in workloads["items"]
        for ref in w["metadata"].get("ownerReferences", [])
        if ref["kind"] == "Pod"
    }
    assert {p.metadata.name for p in pods()} <= owners

    # Scale in to 3: the ReplicaSet drops the unscheduled (gated) pods first; no pod waits.
    apps.patch_namespaced_deployment_scale("workers", queue.namespace, {"spec": {"replicas": 3}})
    _wait("3 workloads admitted, 0 pending", lambda: kueuekit.cq_counts(api, queue) == (3, 0))
    # Scale out to 5: one new pod fits the quota, the other waits gated.
    apps.patch_namespaced_deployment_scale("workers", queue.namespace, {"spec": {"replicas": 5}})
    _wait("4 workloads admitted, 1 pending", lambda: kueuekit.cq_counts(api, queue) == (FITS, 1))
    seen = tally.snapshot()
    assert seen["max admitted at once"] == FITS, seen
    assert seen["bound while gated"] == [], seen
    assert seen["not gated at creation"] == [], seen
    apps.delete_namespaced_deployment("workers", queue.namespace)
    _wait("the Deployment's pods are gone", lambda: not pods())
    _wait("the quota is free again", lambda: kueuekit.cq_counts(api, queue) == (0, 0))


@pytest.fixture
def preempting_queue(api: Any) -> Iterator[Queue]:
    """Like ``queue``, with preemption of lower-priority workloads inside the ClusterQueue."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    namespace = f"tc-kueue-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    q = kueuekit.create_queue(
        api, namespace, cpu=CPU_QUOTA, preemption={"withinClusterQueue": "LowerPriority"}
    )
    yield q
    core.delete_namespace(namespace)
    _wait(
        f"namespace {namespace} is gone",
        lambda: not any(n.metadata.name == namespace for n in core.list_namespace().items),
    )
    kueuekit.delete_queue(api, q)


def test_a_higher_priority_pod_preempts_a_running_one(
    api: Any, preempting_queue: Queue, tmp_path: Path
) -> None:
    """Kueue stops the preempted pod (TerminationTarget, then deletes it) before it admits the
    preemptor: the quota is never exceeded, and the preempted pod is gone for good (whoever
    made it must make it again)."""
    from kubernetes import client

    q = preempting_queue
    core, scheduling = client.CoreV1Api(api), client.SchedulingV1Api(api)
    high = f"tc-kueue-high-{uuid.uuid4().hex[:6]}"
    scheduling.create_priority_class(
        client.V1PriorityClass(metadata=client.V1ObjectMeta(name=high), value=1000)
    )
    try:
        with PodTally(api, q.namespace) as tally:
            for i in range(FITS):
                core.create_namespaced_pod(q.namespace, _pod(f"low-{i}", q.local_queue, tmp_path))
            _wait("4 low pods running", lambda: len(tally.names("running")) == FITS)
            core.create_namespaced_pod(
                q.namespace, _pod("high", q.local_queue, tmp_path, priority_class=high)
            )
            _wait("the high pod is admitted", lambda: "high" in tally.names("admitted"))
            _wait("the high pod runs", lambda: "high" in tally.names("running"))
            seen = tally.snapshot()
            assert len(seen["preempted"]) == 1, seen
            ((victim, reason),) = seen["preempted"].items()
            assert victim.startswith("low-") and reason == "WorkloadEvictedDueToPreempted"
            assert victim in tally.names("finished")
            assert seen["max admitted at once"] == FITS, seen
            assert seen["bound while gated"] == [], seen
            _wait(
                "the preempted pod is deleted",
                lambda: (
                    victim
                    not in {p.metadata.name for p in core.list_namespaced_pod(q.namespace).items}
                ),
            )
            for i in range(FITS):
                (tmp_path / f"low-{i}").touch()
            (tmp_path / "high").touch()
            _wait("the quota is free again", lambda: kueuekit.cq_counts(api, q) == (0, 0))
            assert tally.snapshot()["max admitted at once"] == FITS
    finally:
        scheduling.delete_priority_class(high)
