"""Helpers for tests against Kueue v0.17 (the test cluster's ``up --kueue``, or any cluster
where Kueue runs): whether Kueue is there, a queue (ResourceFlavor + ClusterQueue +
LocalQueue), the ClusterQueue's counts, and a pod watch that counts what Kueue did.

tests/e2e/test_kueue_*.py import it after ``sys.path.insert(0, "tests/cluster")``, as
tests/cluster/test_kueue.py does.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from clusterlib.kueue import ADMISSION_GATE, QUEUE_LABEL, WEBHOOK_CONFIGS

__all__ = [
    "ADMISSION_GATE",
    "GROUP",
    "PREEMPTED_CONDITION",
    "QUEUE_LABEL",
    "VERSION",
    "PodTally",
    "Queue",
    "cq_counts",
    "create_queue",
    "delete_queue",
    "gated",
    "kueue_missing",
]

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
PREEMPTED_CONDITION = "TerminationTarget"  # set on a pod Kueue stops, before deleting it


def kueue_missing(api: Any) -> str | None:
    """Why Kueue cannot be used through ``api`` (None when its CRDs and webhooks are there)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
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


def gated(pod: Any) -> bool:
    """The pod still carries Kueue's admission gate (a V1Pod)."""
    return ADMISSION_GATE in {g.name for g in pod.spec.scheduling_gates or []}


@dataclass(frozen=True)
class Queue:
    namespace: str
    local_queue: str
    cluster_queue: str
    flavor: str


def create_queue(
    api: Any,
    namespace: str,
    cpu: str = "2",
    memory: str = "8Gi",
    preemption: dict[str, Any] | None = None,
    local_queue: str = "lq",
    timeout: float = 60.0,
) -> Queue:
    """A ResourceFlavor and a ClusterQueue of ``cpu``/``memory`` (unique names) that only
    ``namespace`` may use, and LocalQueue ``local_queue`` there; waits until both are Active.
    ``preemption``: the ClusterQueue's, e.g. {"withinClusterQueue": "LowerPriority"}."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    suffix = uuid.uuid4().hex[:6]
    q = Queue(namespace, local_queue, f"tc-cq-{suffix}", f"tc-flavor-{suffix}")
    custom.create_cluster_custom_object(
        GROUP, VERSION, "resourceflavors",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": q.flavor}},
    )  # fmt: skip
    spec: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "resourceGroups": [
            {
                "coveredResources": ["cpu", "memory"],
                "flavors": [
                    {
                        "name": q.flavor,
                        "resources": [
                            {"name": "cpu", "nominalQuota": cpu},
                            {"name": "memory", "nominalQuota": memory},
                        ],
                    }
                ],
            }
        ],
    }
    if preemption:
        spec["preemption"] = preemption
    custom.create_cluster_custom_object(
        GROUP, VERSION, "clusterqueues",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterQueue",
         "metadata": {"name": q.cluster_queue}, "spec": spec},
    )  # fmt: skip
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "localqueues",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalQueue",
         "metadata": {"name": local_queue}, "spec": {"clusterQueue": q.cluster_queue}},
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not _active(custom, q):
        if time.monotonic() > deadline:
            raise TimeoutError(f"ClusterQueue {q.cluster_queue} is not Active after {timeout}s")
        time.sleep(0.2)
    return q


def delete_queue(api: Any, q: Queue) -> None:
    """Delete the ClusterQueue and the flavor (Kueue lets them go once no workload uses them);
    the LocalQueue goes with its namespace."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    custom = client.CustomObjectsApi(api)
    for plural, name in (("clusterqueues", q.cluster_queue), ("resourceflavors", q.flavor)):
        try:
            custom.delete_cluster_custom_object(GROUP, VERSION, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise


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


def cq_counts(api: Any, q: Queue) -> tuple[int, int]:
    """(admitted, pending) workloads of the ClusterQueue, from its status."""
    from kubernetes import client

    status = (
        client.CustomObjectsApi(api)
        .get_cluster_custom_object(GROUP, VERSION, "clusterqueues", q.cluster_queue)
        .get("status", {})
    )
    return int(status.get("admittedWorkloads", 0)), int(status.get("pendingWorkloads", 0))


@dataclass
class PodTally:
    """A watch of a namespace's pods that counts what Kueue did, event by event (events come
    in resourceVersion order, so a pod's finish is seen before the admission it made room for).

        with PodTally(api, namespace) as tally:
            ...create pods...
            assert tally.snapshot()["max admitted at once"] <= 4
    """

    api: Any
    namespace: str
    label_selector: str | None = None
    created_gated: set[str] = field(default_factory=set)
    created_ungated: set[str] = field(default_factory=set)
    admitted: set[str] = field(default_factory=set)  # its admission gate was removed
    finished: set[str] = field(default_factory=set)  # Succeeded, Failed or deleted
    running: set[str] = field(default_factory=set)  # phase Running was seen
    preempted: dict[str, str] = field(default_factory=dict)  # TerminationTarget=True: reason
    bound_while_gated: set[str] = field(default_factory=set)
    max_admitted_unfinished: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def admitted_unfinished(self) -> set[str]:
        with self._lock:
            return self.admitted - self.finished

    def see(self, kind: str, pod: Any) -> None:
        name, is_gated = pod.metadata.name, gated(pod)
        with self._lock:
            if kind == "ADDED" and name not in self.created_gated | self.created_ungated:
                (self.created_gated if is_gated else self.created_ungated).add(name)
            if is_gated and pod.spec.node_name:
                self.bound_while_gated.add(name)
            if not is_gated and name in self.created_gated:
                self.admitted.add(name)
            if pod.status.phase == "Running":
                self.running.add(name)
            for c in pod.status.conditions or []:
                if c.type == PREEMPTED_CONDITION and c.status == "True":
                    self.preempted[name] = c.reason or ""
            if kind == "DELETED" or pod.status.phase in ("Succeeded", "Failed"):
                self.finished.add(name)
            self.max_admitted_unfinished = max(
                self.max_admitted_unfinished, len(self.admitted - self.finished)
            )

    def names(self, which: str) -> set[str]:
        """A copy of one of the sets: "admitted", "finished", "running", "preempted", ..."""
        with self._lock:
            return set(getattr(self, which))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "gated at creation": len(self.created_gated),
                "not gated at creation": sorted(self.created_ungated),
                "admitted": len(self.admitted),
                "finished": len(self.finished),
                "admitted, unfinished": len(self.admitted - self.finished),
                "max admitted at once": self.max_admitted_unfinished,
                "preempted": dict(sorted(self.preempted.items())),
                "bound while gated": sorted(self.bound_while_gated),
            }

    def start(self) -> PodTally:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        listing = core.list_namespaced_pod(self.namespace, label_selector=self.label_selector)
        for pod in listing.items:  # pods already there count as seen, not as created
            self.see("MODIFIED", pod)
        self._thread = threading.Thread(
            target=self._run,
            args=(core, listing.metadata.resource_version),
            name=f"pod-tally-{self.namespace}",
            daemon=True,
        )
        self._thread.start()
        return self

    def _run(self, core: Any, rv: str) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            # A short server timeout: the loop notices stop() within 2 s. A 410 (too old)
            # ends the thread: a short test never falls that far behind.
            for event in watch.Watch().stream(
                core.list_namespaced_pod,
                self.namespace,
                label_selector=self.label_selector,
                resource_version=rv,
                timeout_seconds=2,
            ):
                obj = event["object"]
                rv = obj.metadata.resource_version
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self.see(event["type"], obj)
                if self._stop.is_set():
                    return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> PodTally:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
