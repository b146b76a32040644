"""What the operator sees of a child pod, parsed once from its manifest (pure, no I/O).

A pod runs the slice [start, start + count) of its task. Its annotations say which attempt
it is and how many failures of that slice came before it, so per-index failure counts live
in the pods themselves (as Indexed Jobs keep them in `job-index-failure-count`) and the
status only holds final outcomes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubemap.contract import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_BACKUP,
    ANNOTATION_COUNT,
    ANNOTATION_FAILURES,
    ANNOTATION_INFRA,
    LABEL_INDEX,
    POD_FINALIZER,
)
from kubemap.core.attempts import Attempt, AttemptState, Report
from kubemap.core.policy import Cause
from kubemap.core.ranges import IndexRanges
from kubemap.resources.filemode import program_failure
from kubemap.resources.kueue import kueue_stop, waiting_queue

# A pod that cannot be scheduled for this long is failed (for infrastructure) and replaced.
UNSCHEDULABLE_SECONDS = 120.0
# Waiting reasons of a container that no wait will cure: the pod fails at once.
STUCK_WAITING = {
    "ImagePullBackOff": "image",
    "ErrImagePull": "image",
    "InvalidImageName": "image",
    "ErrImageNeverPull": "image",
    "CreateContainerConfigError": "secret",
}
# A runtime's CreateContainerError is a missing Secret or ConfigMap only when it says so;
# otherwise (a node going away, a runtime hiccup) the kubelet's own retries may cure it.
_MISSING_CONFIG = re.compile(r'\b(secret|configmap|configMap)s? "([^"]+)" not found')

# Pod or container reasons that mean "the platform took the pod away", not "the code failed".
INFRA_REASONS = frozenset(
    {
        "Evicted",
        "NodeLost",
        "Preempting",
        "Shutdown",
        "Terminated",
        "UnexpectedAdmissionError",
        "NodeAffinity",
        "OutOfcpu",
        "OutOfmemory",
        "ContainerCannotRun",
        # The kubelet restarted and could not find the container: lost with its node.
        "ContainerStatusUnknown",
        # The runtime could not start the container (on a node going away, among others);
        # bounded by the infrastructure retry limit, so a broken image still fails the task.
        "StartError",
        "DeadlineExceeded",
    }
)


# The operator's names for the core's attempt types: a pod is an attempt.
PodState = AttemptState
WorkerReport = Report


@dataclass(frozen=True)
class ObservedPod(Attempt):
    """A worker pod as the plan sees it (an Attempt), plus what only pods have."""

    deleting: bool = False
    has_finalizer: bool = True
    created_at: datetime | None = None
    stuck: bool = False  # failed by the operator while Kubernetes still has it pending
    is_pod: bool = False  # a real pod (a warm pool's leases are ObservedPods too)
    # Its containers started (phase Running or later): it may write results before it ends.
    # A pod still pending can be deleted without waiting for what it did: it did nothing.
    launched: bool = True
    # The Kueue LocalQueue the pod waits in, gated, for quota (None: not held by Kueue).
    # Waiting for quota is neither stuck nor failing: no retry, no "unschedulable" verdict.
    queued: str | None = None
    backup: bool = False  # a speculative copy racing the pod of the same slice and attempt

    def describe(self) -> str:
        """'pod t-17-1 (index 17, attempt 2)': a pod is named, to find its logs."""
        return f"pod {self.name}, {super().describe()}" if self.is_pod else super().describe()


def stuck_cause(pod: Mapping[str, Any], created: datetime | None, now: datetime) -> Cause | None:
    """Why a pending pod will never run: an image that cannot be pulled, a missing Secret
    or ConfigMap, or no node that fits it for UNSCHEDULABLE_SECONDS."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        message = str(waiting.get("message") or "")
        kind = STUCK_WAITING.get(reason)
        if reason == "CreateContainerError" and _MISSING_CONFIG.search(message):
            kind = "secret"
        if kind is not None:
            if kind == "image":
                message = f"cannot pull image {cs.get('image') or '?'}: {message}"
            if kind == "secret":
                return Cause(kind, "CreateContainerConfigError", missing_config(pod, message))
            return Cause(kind, reason, message[:300])
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            since = parse_time(cond.get("lastTransitionTime")) or created
            if since is not None and (now - since).total_seconds() >= UNSCHEDULABLE_SECONDS:
                message = str(cond.get("message") or "no node fits the pod")
                return Cause("unschedulable", "Unschedulable", message[:300])
    return None


def missing_config(pod: Mapping[str, Any], message: str) -> str:
    """'secret "kubemap-s3" not found in namespace ns1; create it: kubectl create secret ...':
    the kubelet's words with where and how to fix them. A Secret the pod reads its S3 keys
    from gets the exact command and the chart value that creates it."""
    namespace = str((pod.get("metadata") or {}).get("namespace") or "")
    found = _MISSING_CONFIG.search(message)
    if found is None:
        return message[:300]
    kind, name = found[1].lower(), found[2]
    where = f" in namespace {namespace}" if namespace else ""
    head = f'{kind} "{name}" not found{where}'
    keys = sorted(
        str(ref.get("key"))
        for container in (pod.get("spec") or {}).get("containers") or []
        for entry in container.get("env") or []
        if (ref := (entry.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name") == name
    )
    ns = f" -n {namespace}" if namespace else ""
    if kind == "secret" and "AWS_ACCESS_KEY_ID" in keys:
        literals = " ".join(f"--from-literal={key}=..." for key in keys)
        return (
            f"{head}; create it: kubectl create secret generic {name}{ns} {literals} "
            f"(or list {namespace or 'the namespace'} in the chart value "
            "operator.watchNamespaces, with s3.accessKeyId and s3.secretAccessKey set)"
        )
    return f"{head}; create it in namespace {namespace or 'of the task'} (the pod refers to it)"


def parse_time(text: Any) -> datetime | None:
    if not text:
        return None
    if isinstance(text, datetime):
        return text
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def _int(mapping: Mapping[str, Any], key: str, default: int) -> int:
    try:
        return int(mapping.get(key, default))
    except (TypeError, ValueError):
        return default


def observe_pod(pod: Mapping[str, Any], now: datetime) -> ObservedPod | None:
    """Parse a pod manifest; None for a pod that is not a kubemap worker (labels missing)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if LABEL_INDEX not in labels:
        return None
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    deletion = parse_time(meta.get("deletionTimestamp"))
    grace = _int(meta, "deletionGracePeriodSeconds", 30)
    terminated: Mapping[str, Any] = {}
    for cs in status.get("containerStatuses") or []:
        terminated = (
            (cs.get("state") or {}).get("terminated")
            or (cs.get("lastState") or {}).get("terminated")
            or {}
        )
        if terminated:
            break
    if not terminated:  # a files pod runs the user's program as an init container
        for cs in status.get("initContainerStatuses") or []:
            found = (cs.get("state") or {}).get("terminated") or {}
            if found.get("exitCode") not in (None, 0):
                terminated = found
                break
    exit_code = terminated.get("exitCode") if terminated else None
    created = parse_time(meta.get("creationTimestamp"))
    state = PodState.ACTIVE
    queued = waiting_queue(pod) if phase == "Pending" and deletion is None else None
    cause = (
        stuck_cause(pod, created, now)
        if phase == "Pending" and deletion is None and queued is None
        else None
    )
    if cause is not None:
        state = PodState.FAILED
    elif phase == "Succeeded":
        state = PodState.SUCCEEDED
    elif phase == "Failed":
        state = PodState.FAILED
    elif deletion is not None and (now - deletion).total_seconds() > max(grace, 0) + 30:
        # Deleted long ago and no kubelet reported back (node lost): it is not running any more.
        state = PodState.FAILED
    infra_reason: str | None = None
    report = Report.parse(terminated.get("message")) if terminated else None
    if terminated.get("reason") == "OOMKilled" and report is None:
        # The user's code ran out of memory on its slice: a user failure, named as such.
        start, count = _int(labels, LABEL_INDEX, 0), max(1, _int(annotations, ANNOTATION_COUNT, 1))
        report = Report(
            failed=IndexRanges.span(start, start + count),
            error="OOMKilled: the container exceeded its memory limit; raise "
            "resources.limits.memory or lower itemsPerPod",
        )
    failure = program_failure(status) if report is None else None
    if failure is not None:  # name the file, not only the index, as the pod's error
        start, count = _int(labels, LABEL_INDEX, 0), max(1, _int(annotations, ANNOTATION_COUNT, 1))
        report = Report(failed=IndexRanges.span(start, start + count), error=failure)
    # Preempted (or else stopped) by Kueue: a preemption is requeued without spending anything
    # (core.policy.requeued), Kueue's other evictions are lost pods.
    stopped = kueue_stop(pod) if state is PodState.FAILED and cause is None else None
    if stopped is not None:
        infra_reason = f"pod stopped by Kueue ({stopped.code}): {stopped.message}"
    elif state is PodState.FAILED and cause is None:
        reason = status.get("reason") or terminated.get("reason")
        disrupted = any(
            c.get("type") == "DisruptionTarget" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if deletion is not None:
            infra_reason = "pod deleted before it finished"
        elif disrupted or (reason in INFRA_REASONS):
            infra_reason = f"pod ended by the platform ({reason or 'DisruptionTarget'})"
    finished = parse_time(terminated.get("finishedAt")) if terminated else None
    if finished is None and state is not PodState.ACTIVE:
        # A stuck pod never finishes: date it from its creation, or "now" at each look would
        # push its retry's backoff forever into the future (seen on a real kubelet).
        finished = deletion or (created if cause is not None else None) or now
    return ObservedPod(
        name=str(meta.get("name", "")),
        start=_int(labels, LABEL_INDEX, 0),
        count=max(1, _int(annotations, ANNOTATION_COUNT, 1)),
        attempt=_int(annotations, ANNOTATION_ATTEMPT, 0),
        failures=_int(annotations, ANNOTATION_FAILURES, 0),
        infra_failures=_int(annotations, ANNOTATION_INFRA, 0),
        state=state,
        exit_code=int(exit_code) if exit_code is not None else None,
        infra_reason=infra_reason,
        report=report,
        cause=cause or stopped,
        deleting=deletion is not None,
        has_finalizer=POD_FINALIZER in (meta.get("finalizers") or []),
        finished_at=finished,
        created_at=created,
        stuck=cause is not None,
        is_pod=True,
        launched=phase != "Pending",
        queued=queued,
        backup=annotations.get(ANNOTATION_BACKUP) == "true",
    )
