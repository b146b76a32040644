"""What the operator sees of a child pod, parsed once from its manifest (pure, no I/O).

A pod runs the slice [start, start + count) of its task. Its annotations say which attempt
it is and how many failures of that slice came before it, so per-index failure counts live
in the pods themselves (as Indexed Jobs keep them in `job-index-failure-count`) and the
status only holds final outcomes.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubemap.contract import ANNOTATION_ATTEMPT, ANNOTATION_COUNT, LABEL_INDEX, POD_FINALIZER
from kubemap.ranges import IndexRanges, RangesSyntaxError

ANNOTATION_FAILURES = "kubemap.io/failures"  # user failures of this slice before this pod
ANNOTATION_INFRA = "kubemap.io/infra-failures"  # infrastructure failures before this pod

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


class PodState(enum.StrEnum):
    ACTIVE = "active"  # pending or running: occupies a parallelism slot
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class WorkerReport:
    """The worker's termination message: which indices of its slice succeeded or failed."""

    succeeded: IndexRanges
    failed: IndexRanges

    @classmethod
    def parse(cls, text: str | None) -> WorkerReport | None:
        """None unless text is the worker's {"v":1,...} line (container commands write anything)."""
        if not text:
            return None
        try:
            data = json.loads(text.strip().splitlines()[-1])
            if not isinstance(data, dict) or data.get("v") != 1:
                return None
            return cls(
                IndexRanges.parse(data.get("succeeded")), IndexRanges.parse(data.get("failed"))
            )
        except (ValueError, IndexError, RangesSyntaxError, TypeError):
            return None


@dataclass(frozen=True)
class ObservedPod:
    name: str
    start: int
    count: int
    attempt: int
    failures: int
    infra_failures: int
    state: PodState
    exit_code: int | None = None
    infra_reason: str | None = None  # set when the platform, not the code, ended the pod
    report: WorkerReport | None = None
    deleting: bool = False
    has_finalizer: bool = True
    finished_at: datetime | None = None
    created_at: datetime | None = None

    @property
    def span(self) -> IndexRanges:
        return IndexRanges.span(self.start, self.start + self.count)


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
    exit_code = terminated.get("exitCode") if terminated else None
    state = PodState.ACTIVE
    if phase == "Succeeded":
        state = PodState.SUCCEEDED
    elif phase == "Failed":
        state = PodState.FAILED
    elif deletion is not None and (now - deletion).total_seconds() > max(grace, 0) + 30:
        # Deleted long ago and no kubelet reported back (node lost): it is not running any more.
        state = PodState.FAILED
    infra_reason: str | None = None
    if state is PodState.FAILED:
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
        finished = deletion or now
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
        report=WorkerReport.parse(terminated.get("message")) if terminated else None,
        deleting=deletion is not None,
        has_finalizer=POD_FINALIZER in (meta.get("finalizers") or []),
        finished_at=finished,
        created_at=parse_time(meta.get("creationTimestamp")),
    )
