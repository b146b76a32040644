"""Proof that Kueue's manager on the test cluster admits plain pods and Deployments by quota.

Needs a cluster started with Kueue (``tests/cluster/testcluster up --kueue``) and KUBECONFIG
(``eval "$(tests/cluster/testcluster env)"``); skipped otherwise. A ResourceFlavor, a
ClusterQueue of 2 CPUs and a LocalQueue; pods of 500m labelled with the queue. A pod watch
counts what Kueue did: every labelled pod is created gated (``kueue.x-k8s.io/admission``), at
most 4 are ungated (admitted) and unfinished at any moment, no gated pod is ever bound to a
node, and the gated ones are admitted as admitted ones finish.

The pods' processes run on this host (the node emulator), so a test ends a pod by creating
the file its command waits for: nothing depends on how long anything takes.

    .venv/bin/pytest -m e2e tests/cluster/test_kueue.py
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from clusterlib.kueue import ADMISSION_GATE, QUEUE_LABEL, WEBHOOK_CONFIGS  # noqa: E402

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
CPU_QUOTA = "2"
POD_CPU = "500m"
FITS = 4  # 2 CPUs / 500m
TIMEOUT = 180.0

pytestmark = pytest.mark.e2e


def _kueue_missing() -> str | None:
    if not os.environ.get("KUBECONFIG"):
        return 'needs KUBECONFIG: eval "$(tests/cluster/testcluster env)"'
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    try:
        with config.new_client_from_config(config_file=os.environ["KUBECONFIG"]) as api:
            client.ApiextensionsV1Api(api).read_custom_resource_definition(
                "localqueues.kueue.x-k8s.io", _request_timeout=5
            )
            client.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(
                WEBHOOK_CONFIGS["MutatingWebhookConfiguration"], _request_timeout=5
            )
    except ApiException as exc:
        return (
            f"Kueue is not installed on this cluster ({exc.status} {exc.reason}): start the "
            "test cluster with `tests/cluster/testcluster up --kueue` (or KUBEMAP_TESTCLUSTER_KUEUE=1)"
        )
    except Exception as exc:  # unreachable server, bad kubeconfig
        return f"the API server is not reachable: {exc}"
    return None


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    reason = _kueue_missing()
    if reason:
        pytest.skip(reason)
    from kubernetes import config

    with config.new_client_from_config(config_file=os.environ["KUBECONFIG"]) as client:
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


@dataclass
class Queue:
    namespace: str
    local_queue: str
    cluster_queue: str


@pytest.fixture(scope="module")
def queue(api: Any) -> Iterator[Queue]:
    """A ResourceFlavor, a ClusterQueue of 2 CPUs and a LocalQueue in a fresh namespace."""
    from kubernetes import client

    suffix = uuid.uuid4().hex[:6]
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    q = Queue(f"tc-kueue-{suffix}", "lq", f"tc-cq-{suffix}")
    flavor = f"tc-flavor-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=q.namespace)))
    custom.create_cluster_custom_object(
        GROUP, VERSION, "resourceflavors",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": flavor}},
    )  # fmt: skip
    custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        "clusterqueues",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ClusterQueue",
            "metadata": {"name": q.cluster_queue},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": q.namespace}},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory"],
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": CPU_QUOTA},
                                    {"name": "memory", "nominalQuota": "8Gi"},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )
    custom.create_namespaced_custom_object(
        GROUP, VERSION, q.namespace, "localqueues",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "LocalQueue",
            "metadata": {"name": q.local_queue},
            "spec": {"clusterQueue": q.cluster_queue},
        },
    )  # fmt: skip
    _wait("the ClusterQueue is Active", lambda: _active(custom, q))
    yield q
    core.delete_namespace(q.namespace)
    _wait(
        f"namespace {q.namespace} is gone (Kueue removes its pods' finalizers)",
        lambda: not any(n.metadata.name == q.namespace for n in core.list_namespace().items),
    )
    custom.delete_cluster_custom_object(GROUP, VERSION, "clusterqueues", q.cluster_queue)
    custom.delete_cluster_custom_object(GROUP, VERSION, "resourceflavors", flavor)


def _active(custom: Any, q: Queue) -> bool:
    cq = custom.get_cluster_custom_object(GROUP, VERSION, "clusterqueues", q.cluster_queue)
    lq = custom.get_namespaced_custom_object(
        GROUP, VERSION, q.namespace, "localqueues", q.local_queue
    )
    return all(
        any(
            c["type"] == "Active" and c["status"] == "True"
            for c in o.get("status", {}).get("conditions", [])
        )
        for o in (cq, lq)
    )


def _cq_counts(custom: Any, q: Queue) -> tuple[int, int]:
    """(admitted, pending) workloads of the ClusterQueue, from its status."""
    status = custom.get_cluster_custom_object(GROUP, VERSION, "clusterqueues", q.cluster_queue).get(
        "status", {}
    )
    return int(status.get("admittedWorkloads", 0)), int(status.get("pendingWorkloads", 0))


# --- the pod watch ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a watch of the namespace's pods saw, event by event (in resourceVersion order)."""

    created_gated: set[str] = field(default_factory=set)
    created_ungated: set[str] = field(default_factory=set)
    admitted: set[str] = field(default_factory=set)  # its admission gate was removed
    finished: set[str] = field(default_factory=set)  # Succeeded, Failed or deleted
    running: set[str] = field(default_factory=set)  # phase Running was seen
    bound_while_gated: set[str] = field(default_factory=set)
    max_admitted_unfinished: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admitted_unfinished(self) -> set[str]:
        return self.admitted - self.finished

    def see(self, kind: str, pod: Any) -> None:
        name = pod.metadata.name
        gated = ADMISSION_GATE in {g.name for g in pod.spec.scheduling_gates or []}
        with self.lock:
            if kind == "ADDED" and name not in self.created_gated | self.created_ungated:
                (self.created_gated if gated else self.created_ungated).add(name)
            if gated and pod.spec.node_name:
                self.bound_while_gated.add(name)
            if not gated and name in self.created_gated:
                self.admitted.add(name)
            if pod.status.phase == "Running":
                self.running.add(name)
            if kind == "DELETED" or pod.status.phase in ("Succeeded", "Failed"):
                self.finished.add(name)
            self.max_admitted_unfinished = max(
                self.max_admitted_unfinished, len(self.admitted_unfinished())
            )

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "gated at creation": len(self.created_gated),
                "not gated at creation": sorted(self.created_ungated),
                "admitted": len(self.admitted),
                "finished": len(self.finished),
                "admitted, unfinished": len(self.admitted_unfinished()),
                "max admitted at once": self.max_admitted_unfinished,
                "bound while gated": sorted(self.bound_while_gated),
            }


@pytest.fixture
def tally(api: Any, queue: Queue) -> Iterator[Tally]:
    from kubernetes import client, watch
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api)
    seen = Tally()
    stop = threading.Event()
    rv = core.list_namespaced_pod(queue.namespace).metadata.resource_version
    started = threading.Event()

    def run() -> None:
        nonlocal rv
        while not stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    core.list_namespaced_pod,
                    queue.namespace,
                    resource_version=rv,
                    timeout_seconds=2,
                    allow_watch_bookmarks=True,
                ):
                    started.set()
                    obj = event["object"]
                    rv = obj.metadata.resource_version
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        seen.see(event["type"], obj)
                    if stop.is_set():
                        break
            except ApiException as exc:
                if exc.status == 410:  # too old: re-list (never expected in a short test)
                    raise
            started.set()

    thread = threading.Thread(target=run, name="pod-watch", daemon=True)
    thread.start()
    started.wait(10)
    yield seen
    stop.set()
    thread.join(10)


def _pod(name: str, queue: str, release_dir: Path) -> dict[str, Any]:
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
        },
    }


def test_plain_pods_are_gated_and_admitted_within_the_quota(
    api: Any, queue: Queue, tally: Tally, tmp_path: Path
) -> None:
    from kubernetes import client

    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    total = 2 * FITS
    names = [f"pod-{i}" for i in range(total)]
    for name in names:
        made = core.create_namespaced_pod(queue.namespace, _pod(name, queue.local_queue, tmp_path))
        # The webhook's mutation is in the create response itself.
        assert ADMISSION_GATE in {g.name for g in made.spec.scheduling_gates or []}, made.spec

    # Kueue has looked at every workload: 4 admitted, 4 pending for quota.
    _wait("4 workloads admitted, 4 pending", lambda: _cq_counts(custom, queue) == (FITS, FITS))
    _wait("4 admitted pods running", lambda: len(tally.running) == FITS)
    seen = tally.snapshot()
    assert seen["gated at creation"] == total, seen
    assert seen["admitted"] == FITS, seen
    assert seen["max admitted at once"] == FITS, seen
    pending = [
        p
        for p in core.list_namespaced_pod(queue.namespace).items
        if p.metadata.name not in tally.admitted
    ]
    assert len(pending) == FITS
    for pod in pending:  # gated: Pending, on no node, and Kueue says why
        assert pod.status.phase == "Pending" and not pod.spec.node_name, pod.status
        assert ADMISSION_GATE in {g.name for g in pod.spec.scheduling_gates or []}

    # Two admitted pods finish: two gated ones take their quota.
    first = sorted(tally.admitted)[:2]
    for name in first:
        (tmp_path / name).touch()
    _wait("6 pods admitted", lambda: len(tally.admitted) == FITS + 2)
    assert set(first) <= tally.finished

    for name in names:  # the rest finish as they come
        (tmp_path / name).touch()
    _wait("every pod admitted and finished", lambda: len(tally.finished) == total)
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
    _wait("the quota is free again", lambda: _cq_counts(custom, queue) == (0, 0))


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
    api: Any, queue: Queue, tally: Tally
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
    _wait("4 workloads admitted, 2 pending", lambda: _cq_counts(custom, queue) == (FITS, 2))
    _wait(
        "4 worker pods running",
        lambda: len(tally.running & {p.metadata.name for p in pods()}) == FITS,
    )
    seen = tally.snapshot()
    assert seen["gated at creation"] == FITS + 2, seen
    assert seen["admitted"] == FITS, seen
    gated = [p for p in pods() if ADMISSION_GATE in {g.name for g in p.spec.scheduling_gates or []}]
    assert len(gated) == 2 and all(not p.spec.node_name for p in gated)
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
    _wait("3 workloads admitted, 0 pending", lambda: _cq_counts(custom, queue) == (3, 0))
    # Scale out to 5: one new pod fits the quota, the other waits gated.
    apps.patch_namespaced_deployment_scale("workers", queue.namespace, {"spec": {"replicas": 5}})
    _wait("4 workloads admitted, 1 pending", lambda: _cq_counts(custom, queue) == (FITS, 1))
    seen = tally.snapshot()
    assert seen["max admitted at once"] == FITS, seen
    assert seen["bound while gated"] == [], seen
    assert seen["not gated at creation"] == [], seen
    apps.delete_namespaced_deployment("workers", queue.namespace)
    _wait("the Deployment's pods are gone", lambda: not pods())
    _wait("the quota is free again", lambda: _cq_counts(custom, queue) == (0, 0))
