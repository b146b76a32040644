"""Kueue (kueue.x-k8s.io, v0.17) as a MapTask meets it: the names Kueue puts on a worker pod,
what they mean for the task, and the messages the SDK and the operator both give when a
queue cannot be used. Pure, no I/O.

A worker pod labelled `kueue.x-k8s.io/queue-name` is created gated (scheduling gate
`kueue.x-k8s.io/admission`) and runs only once its queue's quota admits it; a pod Kueue
preempts gets the condition TerminationTarget (reason WorkloadEvictedDueToPreempted) and is
deleted. Plain-pod integration: one Workload per pod, so a task's pods are admitted one by one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubemap.core.policy import Cause

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
LOCAL_QUEUES = "localqueues"
LOCAL_QUEUE_CRD = f"{LOCAL_QUEUES}.{GROUP}"
QUEUE_LABEL = f"{GROUP}/queue-name"
ADMISSION_GATE = f"{GROUP}/admission"
# Kueue labels a pod without a queue with this LocalQueue when the namespace has one
# (LocalQueueDefaulting, on by default since v0.12 and locked on in v0.17).
DEFAULT_LOCAL_QUEUE = "default"
# The pod condition Kueue sets before it deletes a pod it stops; a DisruptionTarget with an
# eviction reason of Kueue's means the same.
STOP_CONDITIONS = ("TerminationTarget", "DisruptionTarget")
EVICTED_PREFIX = "WorkloadEvictedDueTo"
PREEMPTED = "Preempted"


def waiting_queue(pod: Mapping[str, Any]) -> str | None:
    """The queue a pod waits in while Kueue holds it back (its admission gate is on), else
    None. A pod with a queue label but no gate has been admitted."""
    spec = pod.get("spec") or {}
    gates = {str(g.get("name")) for g in spec.get("schedulingGates") or []}
    if ADMISSION_GATE not in gates:
        return None
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return str(labels.get(QUEUE_LABEL) or DEFAULT_LOCAL_QUEUE)


def kueue_stop(pod: Mapping[str, Any]) -> Cause | None:
    """Why Kueue stopped a pod, from its conditions: Cause("lost", "Preempted", ...) for a
    preemption (requeued without spending anything, see core.policy.requeued), another code
    (PodsReadyTimeout, ClusterQueueStopped ...) for Kueue's other evictions (a lost pod)."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        reason = str(cond.get("reason") or "")
        if (
            cond.get("type") in STOP_CONDITIONS
            and cond.get("status") == "True"
            and reason.startswith(EVICTED_PREFIX)
        ):
            code = reason[len(EVICTED_PREFIX) :] or reason
            message = str(cond.get("message") or f"stopped by Kueue ({reason})")
            return Cause("lost", code, message[:300])
    return None


def waiting_message(queue: str, queued: int) -> str:
    """What status.message and `kubemap get` say while pods wait for quota."""
    pods = "1 pod" if queued == 1 else f"{queued} pods"
    return f"waiting for quota in queue {queue} ({pods} admitted by Kueue as quota frees up)"


def missing_queue_message(queue: str, namespace: str) -> str:
    return (
        f"LocalQueue {queue!r} does not exist in namespace {namespace}: its pods would wait "
        f"for ever. List the queues with `kubectl get localqueues -n {namespace}` and pass one "
        "of them (queue= / --queue / spec.queueName), or ask your cluster admin to create it"
    )


def kueue_absent_message(queue: str) -> str:
    return (
        f"queue {queue!r} given, but Kueue is not installed on this cluster (no CRD "
        f"{LOCAL_QUEUE_CRD}): install Kueue (see docs/guides/kueue.md) or drop the queue to "
        "run without quotas"
    )
