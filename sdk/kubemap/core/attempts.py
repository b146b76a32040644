"""What the plan observes: attempts (one run of a slice of indices) and what they reported.

An attempt is a pod on Kubernetes, a worker process's job locally, a lease on a warm pool.
Its annotations (or the backend's memory) say which attempt of its slice it is and how many
user and infrastructure failures of that slice came before it, so per-index failure counts
live with the attempts (as Indexed Jobs keep them in `job-index-failure-count`) and the
recorded state only holds final outcomes.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime

from kubemap.core.policy import Cause, ExitKind, classify_exit
from kubemap.core.ranges import IndexRanges, RangesSyntaxError


class AttemptState(enum.StrEnum):
    ACTIVE = "active"  # pending or running: occupies a parallelism slot
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Report:
    """A worker's own account of its slice: which indices succeeded or failed, the first
    user error ("ValueError: bad input 3"), and the infrastructure cause if it gave up."""

    succeeded: IndexRanges = field(default_factory=IndexRanges)
    failed: IndexRanges = field(default_factory=IndexRanges)
    error: str | None = None
    cause: Cause | None = None
    # The worker's timing record of the slice (task.timings, JSON), passed on opaque: the
    # operator summarises it in the status and its metrics without reading the store.
    timings: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> Report | None:
        """None unless the last line of text is the worker's {"v":1,...} summary
        (container commands write anything to their termination log)."""
        if not text:
            return None
        try:
            data = json.loads(text.strip().splitlines()[-1])
            if not isinstance(data, dict) or data.get("v") != 1:
                return None
            raw_cause = data.get("cause")
            cause = (
                Cause(
                    kind=str(raw_cause.get("kind") or "store"),
                    code=str(raw_cause.get("code") or ""),
                    message=str(raw_cause.get("message") or "")[:300],
                )
                if isinstance(raw_cause, dict)
                else None
            )
            error = data.get("error")
            timing = data.get("t")
            return cls(
                IndexRanges.parse(data.get("succeeded")),
                IndexRanges.parse(data.get("failed")),
                error=str(error)[:300] if error else None,
                cause=cause,
                timings=(json.dumps(timing),) if isinstance(timing, dict) else (),
            )
        except (ValueError, IndexError, RangesSyntaxError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class Attempt:
    """One run of the slice [start, start + count)."""

    name: str
    start: int
    count: int
    attempt: int  # 0 for the first run of the slice
    failures: int  # user failures of this slice before this attempt
    infra_failures: int  # infrastructure failures before this attempt
    state: AttemptState
    exit_code: int | None = None
    # Set when the platform, not the code, ended the attempt (evicted, deleted, lost).
    infra_reason: str | None = None
    cause: Cause | None = None  # the observed infrastructure cause (pod level), if any
    report: Report | None = None
    finished_at: datetime | None = None
    # How it ended, for a backend without exit codes (a warm pool's worker reports it).
    ended: ExitKind | None = None

    @property
    def span(self) -> IndexRanges:
        return IndexRanges.span(self.start, self.start + self.count)

    @classmethod
    def started(cls, request: SliceRequest, name: str) -> Attempt:
        """The attempt a backend just started for one of the plan's slice requests."""
        return cls(
            name=name,
            start=request.start,
            count=request.count,
            attempt=request.attempt,
            failures=request.failures,
            infra_failures=request.infra_failures,
            state=AttemptState.ACTIVE,
        )

    def describe(self) -> str:
        """'index 17, attempt 2' (attempts counted from 1): how messages name an attempt.
        Never its name alone: a lease's "17-1" reads like a pod's name."""
        where = (
            f"index {self.start}"
            if self.count == 1
            else f"indices {self.start}-{self.start + self.count - 1}"
        )
        return f"{where}, attempt {self.attempt + 1}"

    def kind(self) -> ExitKind:
        """Whose fault the end of this attempt was (OK for a success)."""
        if self.state is AttemptState.SUCCEEDED:
            return ExitKind.OK
        if self.infra_reason is not None or self.cause is not None:
            return ExitKind.INFRA
        if self.ended is not None:
            return ExitKind.INFRA if self.ended is ExitKind.OK else self.ended
        kind = classify_exit(self.exit_code)
        # A failed attempt with exit 0: the platform killed a finished container.
        return ExitKind.INFRA if kind is ExitKind.OK else kind

    def ending(self) -> str:
        """'exit code 1', or what the worker reported when there is no exit code."""
        if self.exit_code is None and self.ended is not None:
            return f"reported {self.ended.value} failure"
        return f"exit code {self.exit_code}"

    def infra_cause(self) -> Cause | None:
        """The infrastructure cause of a failed attempt: the pod's, else the worker's."""
        if self.cause is not None:
            return self.cause
        if self.report is not None and self.report.cause is not None:
            return self.report.cause
        if self.infra_reason is not None:
            return Cause("lost", "", self.infra_reason)
        return None


@dataclass(frozen=True)
class SliceRequest:
    """A slice to start: [start, start + count), with its attempt metadata."""

    start: int
    count: int
    attempt: int = 0
    failures: int = 0
    infra_failures: int = 0
    # The slice runs again because its last attempt was preempted (policy.requeued), not
    # because it failed: not a retry.
    requeue: bool = False
    # A speculative copy of a straggling attempt (same slice, same attempt number), racing it.
    backup: bool = False
