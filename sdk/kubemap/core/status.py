"""The one decider of what users see of a run: Phase, Reason, RunStatus and run_status().

Every backend records a task the same way (the MapTask's status on Kubernetes; status.json
in the task's prefix locally): a phase, counts, the index ranges, and conditions whose
reason says why a finished task did not succeed. `run_status()` turns that record into a
`RunStatus`, so the SDK, the CLI and `MapRun.attach` agree on phase, counts and reason.
Pure: no I/O, and no import of boto3, kubernetes or kopf.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED)


class Reason(enum.StrEnum):
    """Why a task reached its phase: the reason of its last condition."""

    COMPLETED = "Completed"
    FAILED_INDEXES = "FailedIndexes"  # more indices failed than min_success_ratio allows
    TOO_MANY_FAILED_RANGES = "TooManyFailedRanges"  # failures too scattered to track
    SYSTEMATIC = "SystematicFailure"  # the same infrastructure cause on the first attempts
    INFRASTRUCTURE = "InfrastructureError"  # store or workers broke, not the user's code
    USAGE = "UsageError"  # the worker's environment breaks the contract
    DEADLINE = "DeadlineExceeded"  # timeout / activeDeadlineSeconds
    CANCELLED = "Suspended"  # cancel(): spec.suspend is true
    INVALID_SPEC = "InvalidSpec"  # the operator refused the spec
    POOL_UNAVAILABLE = "PoolUnavailable"  # spec.pool, but the operator runs no dispatcher

    @classmethod
    def parse(cls, text: str | None) -> Reason | None:
        try:
            return cls(text) if text else None
        except ValueError:
            return None


# Condition type a finished phase is recorded under (as a Job's Complete / Failed).
CONDITION_OF_PHASE = {
    Phase.SUCCEEDED: "Complete",
    Phase.FAILED: "Failed",
    Phase.CANCELLED: "Suspended",
}


@dataclass(frozen=True)
class RunStatus:
    """A snapshot of a run; small whatever the number of inputs.

    Every index is in exactly one of: succeeded, failed (for good), active, not_run.
    While a run goes on, not_run counts what has not finished yet; once it is finished it
    counts the indices that were never run (the run stopped, was cancelled or timed out).
    """

    phase: Phase
    total: int
    succeeded: int = 0
    failed: int = 0
    active: int = 0
    reason: Reason | None = None
    message: str | None = None
    retries: int = 0  # attempts spent beyond the first, when the backend knows them

    @property
    def finished(self) -> bool:
        return self.phase.finished

    @property
    def not_run(self) -> int:
        return max(0, self.total - self.succeeded - self.failed - self.active)

    @property
    def pending(self) -> int:
        """Indices not started yet or waiting for a retry (alias of not_run while running)."""
        return self.not_run

    def counts(self) -> str:
        """'12 succeeded, 1 failed, 7 not run': the three counts every message gives."""
        text = f"{self.succeeded} succeeded, {self.failed} failed, {self.not_run} not run"
        return text + (f", {self.active} running" if self.active else "")


def outcome_message(
    phase: Phase,
    *,
    total: int,
    succeeded: int,
    failed: int,
    why: str,
) -> str:
    """The one-line account of a finished run: why it stopped, then the three counts."""
    not_run = max(0, total - succeeded - failed)
    counts = f"{succeeded} succeeded, {failed} failed, {not_run} not run"
    return f"{why}; {counts}" if why else counts


def _last_reason(conditions: Sequence[Mapping[str, Any]]) -> Reason | None:
    for cond in reversed(conditions):
        parsed = Reason.parse(cond.get("reason"))
        if parsed is not None:
            return parsed
    return None


def run_status(record: Mapping[str, Any] | None, *, total: int) -> RunStatus:
    """A RunStatus from a recorded status (the MapTask's `.status`, or status.json).

    `record` uses the wire names (phase, total, succeeded, failed, active, conditions,
    message). None means nothing was recorded yet: the task is Pending.
    """
    if not record:
        return RunStatus(phase=Phase.PENDING, total=total)
    try:
        phase = Phase(record.get("phase") or Phase.PENDING)
    except ValueError:
        phase = Phase.PENDING
    reason = _last_reason(record.get("conditions") or [])
    if phase is Phase.CANCELLED and reason is None:
        reason = Reason.CANCELLED
    if phase is Phase.FAILED and reason is None:
        reason = Reason.FAILED_INDEXES
    if phase is Phase.SUCCEEDED:
        reason = Reason.COMPLETED
    if not phase.finished:
        reason = None
    return RunStatus(
        phase=phase,
        total=int(record.get("total") or total),
        succeeded=int(record.get("succeeded") or 0),
        failed=int(record.get("failed") or 0),
        active=0 if phase.finished else int(record.get("active") or 0),
        reason=reason,
        message=record.get("message"),
        retries=int(record.get("retries") or 0),
    )


__all__ = [
    "CONDITION_OF_PHASE",
    "Phase",
    "Reason",
    "RunStatus",
    "outcome_message",
    "run_status",
]
