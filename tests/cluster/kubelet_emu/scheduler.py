"""The scheduler's part: bind pending pods to the one node, when their requests fit.

Only what a one-node cluster needs: resource requests (cpu, memory, pod count) against the
node's allocatable, `nodeSelector` against the node's labels, `schedulingGates`, and
`schedulerName`. Affinity, taints/tolerations and topology spread are not evaluated.
A pod that does not fit stays Pending with PodScheduled=False/Unschedulable, as with
kube-scheduler, and is retried when a pod on the node finishes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.client.exceptions import ApiException

from .api import Api, Handler, Obj, pod_path
from .events import EventRecorder
from .quantity import parse_quantity

log = logging.getLogger("kubelet_emu.scheduler")

RETRY_EVERY = 5.0


@dataclass(frozen=True)
class Resources:
    cpu: Decimal = Decimal(0)
    memory: Decimal = Decimal(0)
    pods: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory + other.memory, self.pods + other.pods)


def _container_requests(container: Mapping[str, Any]) -> Resources:
    requests = (container.get("resources") or {}).get("requests") or {}
    return Resources(
        cpu=parse_quantity(requests.get("cpu", 0)), memory=parse_quantity(requests.get("memory", 0))
    )


def pod_requests(pod: Mapping[str, Any]) -> Resources:
    """Sum of the containers' requests, or the largest init container's if larger, plus overhead."""
    spec = pod.get("spec") or {}
    total = Resources(pods=1)
    for c in spec.get("containers") or []:
        total = total + _container_requests(c)
    for c in spec.get("initContainers") or []:
        init = _container_requests(c)
        total = Resources(max(total.cpu, init.cpu), max(total.memory, init.memory), total.pods)
    overhead = spec.get("overhead") or {}
    return total + Resources(
        parse_quantity(overhead.get("cpu", 0)), parse_quantity(overhead.get("memory", 0))
    )


def unfit_reasons(
    pod: Mapping[str, Any],
    used: Resources,
    allocatable: Mapping[str, str],
    labels: Mapping[str, str],
) -> list[str]:
    """Why the pod cannot go on the node (kube-scheduler's wording); empty when it fits."""
    reasons: list[str] = []
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        reasons.append("node(s) didn't match Pod's node affinity/selector")
    want = pod_requests(pod)
    if used.pods + want.pods > int(allocatable["pods"]):
        reasons.append("Too many pods")
    if want.cpu and used.cpu + want.cpu > parse_quantity(allocatable["cpu"]):
        reasons.append("Insufficient cpu")
    if want.memory and used.memory + want.memory > parse_quantity(allocatable["memory"]):
        reasons.append("Insufficient memory")
    return reasons


def wants_this_scheduler(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    return (
        not spec.get("nodeName")
        and not spec.get("schedulingGates")
        and not meta.get("deletionTimestamp")
        and (spec.get("schedulerName") or "default-scheduler") == "default-scheduler"
        and (pod.get("status") or {}).get("phase", "Pending") == "Pending"
    )


class NodeUsage:
    """Requests of the non-terminal pods on the node, shared by the kubelet and the scheduler."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, Resources] = {}
        self.freed = threading.Event()

    def total(self) -> Resources:
        with self._lock:
            return sum(self._pods.values(), Resources())

    def assume(self, uid: str, pod: Mapping[str, Any]) -> None:
        with self._lock:
            self._pods[uid] = pod_requests(pod)

    def release(self, uid: str) -> None:
        with self._lock:
            if self._pods.pop(uid, None) is None:
                return
        self.freed.set()


class Scheduler(Handler):
    def __init__(
        self,
        api: Api,
        node_name: str,
        allocatable: Mapping[str, str],
        labels: Mapping[str, str],
        usage: NodeUsage,
        events: EventRecorder,
    ) -> None:
        self.events = events
        self.api = api
        self.node_name = node_name
        self.allocatable = dict(allocatable)
        self.labels = dict(labels)
        self.usage = usage
        self._lock = threading.Lock()
        self._pending: dict[str, Obj] = {}
        self._reported: dict[str, str] = {}
        self.thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def on_list(self, items: list[Obj]) -> None:
        with self._lock:
            self._pending = {p["metadata"]["uid"]: p for p in items if wants_this_scheduler(p)}
        self.usage.freed.set()

    def on_event(self, kind: str, obj: Obj) -> None:
        uid = obj["metadata"]["uid"]
        with self._lock:
            if kind == "DELETED" or not wants_this_scheduler(obj):
                self._pending.pop(uid, None)
                self._reported.pop(uid, None)
                return
            self._pending[uid] = obj
        self.usage.freed.set()

    def _loop(self) -> None:
        while True:
            self.usage.freed.wait(RETRY_EVERY)
            self.usage.freed.clear()
            with self._lock:
                queue = list(self._pending.values())
            for pod in queue:
                try:
                    self._schedule_one(pod)
                except Exception as exc:
                    log.warning("scheduling %s failed: %s", pod["metadata"]["name"], exc)

    def _schedule_one(self, pod: Obj) -> None:
        meta = pod["metadata"]
        reasons = unfit_reasons(pod, self.usage.total(), self.allocatable, self.labels)
        if reasons:
            self._report_unschedulable(
                pod, "0/1 nodes are available: 1 " + ", 1 ".join(reasons) + "."
            )
            return
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        self.usage.assume(meta["uid"], pod)
        try:
            self.api.create(pod_path(meta["namespace"], meta["name"], "binding"), binding)
        except ApiException as exc:
            if exc.status != 409:
                self.usage.release(meta["uid"])
            if exc.status not in (404, 409):
                raise
            log.info(
                "pod %s/%s is gone or already bound (%s)",
                meta["namespace"],
                meta["name"],
                exc.status,
            )
        else:
            log.info("bound %s/%s to %s", meta["namespace"], meta["name"], self.node_name)
        with self._lock:
            self._pending.pop(meta["uid"], None)
            self._reported.pop(meta["uid"], None)

    def _report_unschedulable(self, pod: Obj, message: str) -> None:
        meta = pod["metadata"]
        if self._reported.get(meta["uid"]) == message:
            return
        self._reported[meta["uid"]] = message
        self.events.warn(pod, "FailedScheduling", message, component="default-scheduler")
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
        }
        body = {"metadata": {"uid": meta["uid"]}, "status": {"conditions": [condition]}}
        try:
            self.api.patch(pod_path(meta["namespace"], meta["name"], "status"), body)
        except ApiException as exc:
            log.info("could not mark %s unschedulable: %s", meta["name"], exc.status)
        log.info("pod %s/%s is unschedulable: %s", meta["namespace"], meta["name"], message)
