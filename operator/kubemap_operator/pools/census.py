"""Which workers of a queued pool Kueue admitted and which wait for quota, from its pods.

Kueue's webhook gates every pod of a queued Deployment (scheduling gate
`kueue.x-k8s.io/admission`, and `kueue.x-k8s.io/topology` for topology-aware placement) and
removes the admission gate when the pod's own Workload fits the quota; until then the pod is
Pending with PodScheduled=False, reason SchedulingGated, on no node. A gated pod never runs,
so it never leases: the dispatcher sizes chunks by the admitted ones. (A pod admitted whose
topology gate is still on holds its quota and is about to run: admitted.)

The pool reconcile lists a queued pool's pods (one LIST by label, pool-sized): the operator's
pod watch is filtered by the API server to MapTask pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubemap.resources.kueue import waiting_queue


class WorkerPod(StrEnum):
    ADMITTED = "admitted"  # no admission gate: running, or about to
    WAITING = "waiting"  # behind Kueue's admission gate: waiting for quota


def worker_pod_state(pod: Mapping[str, Any]) -> WorkerPod | None:
    """What a pool pod counts as; None for one that is going or gone (terminating, or
    finished), which holds no quota a worker could use."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    return WorkerPod.WAITING if waiting_queue(pod) is not None else WorkerPod.ADMITTED


@dataclass(frozen=True)
class WorkerCounts:
    admitted: int = 0
    waiting: int = 0


def count_workers(pods: Iterable[Mapping[str, Any]]) -> WorkerCounts:
    states = [worker_pod_state(p) for p in pods]
    return WorkerCounts(
        admitted=states.count(WorkerPod.ADMITTED), waiting=states.count(WorkerPod.WAITING)
    )
