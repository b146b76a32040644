"""The one decider of what users see of a run: Phase, Reason, RunStatus and run_status().

Every backend records a task the same way (the MapTask's status on Kubernetes; status.json
in the task's prefix locally): a phase, counts, the index ranges, and conditions whose
reason says why a finished task did not succeed. `run_status()` turns that record into a
`RunStatus`, so the SDK, the CLI and `MapRun.attach` agree on phase, counts and reason.

`partition()` is the one place that splits a task's indices into succeeded, failed, active
and not run: the operator's status writer (MapTask status, `kubectl get mt`, `kubemap get`)
and the SDK's failures()/not_run()/MapTaskError (through `settle`, and so `kubemap results`)
count through it, so every surface shows the same three numbers and they always add up to
the total.
Pure: no I/O, and no import of boto3, kubernetes or kopf.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubemap.core.ranges import IndexRanges, RangesSyntaxError


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
    QUEUE_UNAVAILABLE = "QueueUnavailable"  # a Kueue queue that does not exist, or no Kueue

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

    Every index is in exactly one of: succeeded, failed, active (indices being run now),
    not_run. While a run goes on, failed counts the indices failed for good and not_run what
    has not finished yet; once it is finished, failed counts every index whose last attempt
    failed and not_run the indices that were never run (the run stopped, was cancelled or
    timed out) -- the same split as failures() and not_run(), see `partition`.

    succeeded_indexes / failed_indexes are the recorded index sets when the backend keeps
    them (a MapTask's status), else None.
    """

    phase: Phase
    total: int
    succeeded: int = 0
    failed: int = 0
    active: int = 0
    reason: Reason | None = None
    message: str | None = None
    retries: int = 0  # attempts spent beyond the first, when the backend knows them
    succeeded_indexes: IndexRanges | None = None
    failed_indexes: IndexRanges | None = None

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


@dataclass(frozen=True)
class Partition:
    """Every index of a task in exactly one of four sets."""

    total: int
    succeeded: IndexRanges
    failed: IndexRanges
    active: IndexRanges
    not_run: IndexRanges

    def counts(self) -> str:
        return RunStatus(
            Phase.RUNNING,
            self.total,
            len(self.succeeded),
            len(self.failed),
            len(self.active),
        ).counts()


def partition(
    total: int,
    *,
    succeeded: IndexRanges,
    failed: IndexRanges | None = None,
    active: IndexRanges | None = None,
) -> Partition:
    """Split [0, total) so that each index is counted once: a result wins over a failure
    (an index that failed and then succeeded on a retry succeeded), a failure over an
    attempt still running; whatever is left was not run (yet)."""
    every = IndexRanges.span(0, total)
    ok = succeeded & every
    bad = ((failed or IndexRanges()) & every) - ok
    busy = ((active or IndexRanges()) & every) - ok - bad
    return Partition(total, ok, bad, busy, every - ok - bad - busy)


def settle(status: RunStatus, *, results: IndexRanges, errors: IndexRanges) -> Partition:
    """The partition users read (failures(), not_run(), MapTaskError, `kubemap results`):
    results from the store (what results() returns), failures as the backend recorded them
    once the run is finished (a MapTask's failedIndexes), else the error records without
    a result."""
    failed = errors
    if status.finished and status.failed_indexes is not None:
        failed = status.failed_indexes
    return partition(status.total, succeeded=results, failed=failed)


def outcome_message(
    phase: Phase,
    *,
    total: int,
    succeeded: int,
    failed: int,
    why: str,
) -> str:
    """The one-line account of a finished run: why it stopped, then the three counts."""
    counts = RunStatus(phase, total, succeeded, failed).counts()
    return f"{why}; {counts}" if why else counts


_COUNTS = re.compile(r"(; )?\d+ succeeded, \d+ failed, \d+ not run(?=$| \()")


def why_of(message: str) -> str:
    """The reason part of an outcome message, without its three counts."""
    return _COUNTS.sub("", message, count=1)


def restate_counts(message: str, *, total: int, succeeded: int, failed: int) -> str:
    """`message` with its three counts replaced by these (the final ones, counted after
    the work in flight at the verdict had ended)."""
    counts = RunStatus(Phase.FAILED, total, succeeded, failed).counts()
    if not _COUNTS.search(message):
        return message
    return _COUNTS.sub(lambda m: (m[1] or "") + counts, message, count=1)


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
    size = int(record.get("total") or total)
    succeeded = int(record.get("succeeded") or 0)
    failed = int(record.get("failed") or 0)
    # `active` on a MapTask counts pods (a pod runs a slice of several indices); notRun is
    # what the operator counted as not run, so the indices running are what is left.
    if phase.finished:
        active = 0
    elif record.get("notRun") is not None:
        active = max(0, size - succeeded - failed - int(record.get("notRun") or 0))
    else:
        active = int(record.get("active") or 0)
    return RunStatus(
        phase=phase,
        total=size,
        succeeded=succeeded,
        failed=failed,
        active=active,
        reason=reason,
        message=record.get("message"),
        retries=int(record.get("retries") or 0),
        succeeded_indexes=_ranges(record.get("succeededIndexes")),
        failed_indexes=_ranges(record.get("failedIndexes")),
    )


def _ranges(text: Any) -> IndexRanges | None:
    if text is None:
        return None
    try:
        return IndexRanges.parse(str(text))
    except RangesSyntaxError:
        return None


__all__ = [
    "CONDITION_OF_PHASE",
    "Partition",
    "Phase",
    "Reason",
    "RunStatus",
    "outcome_message",
    "partition",
    "restate_counts",
    "run_status",
    "settle",
    "why_of",
]
