"""Leases and the work still to lease, of one pool task (pure, no I/O).

A lease is one attempt of the slice [start, start + count), held by one worker. Its states
and the only transitions between them:

    (none) --grant--> OFFERED --renew--> LEASED --renew--> LEASED
    OFFERED | LEASED --report--> REPORTED   the worker's outcome, judged once
    OFFERED | LEASED --expire--> EXPIRED    no heartbeat before `expires`: lost with its
                                            worker (an infrastructure failure, no user retry)
    OFFERED | LEASED --revoke--> LOST       taken back: the task ended, was deleted, its
                                            twin won the race (speculation), ...

REPORTED, EXPIRED and LOST are final: a final lease is never renewed, reported or granted
again (a late report gets 410 Gone). Work not leased yet is a `Pending` entry: indices with
the attempt metadata of their next lease (a retry carries its failure counts and the moment
it is due). Taking a chunk from an entry costs interval arithmetic on that entry only.

Speculation (kubemap.core.speculation): a straggling lease may get one backup, a second live
lease of the same slice and attempt on another worker; the two are each other's `twin`. The
primary holds the indices; the backup only races it. The first ok report wins and the twin
is revoked; a copy that fails, expires or gives up while its twin runs is set aside (not
judged) and the twin carries on alone, as the primary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from kubemap.core.attempts import Attempt, AttemptState, Report
from kubemap.core.policy import ExitKind
from kubemap.core.ranges import IndexRanges


class LeaseState(enum.StrEnum):
    OFFERED = "offered"  # granted; its worker has not renewed it yet
    LEASED = "leased"  # renewed by its worker at least once
    REPORTED = "reported"
    EXPIRED = "expired"
    LOST = "lost"

    @property
    def live(self) -> bool:
        return self in (LeaseState.OFFERED, LeaseState.LEASED)


class IllegalTransition(RuntimeError):
    pass


@dataclass
class Lease:
    start: int
    count: int
    attempt: int
    failures: int  # user failures of these indices before this attempt
    infra_failures: int
    worker: str
    expires: datetime
    leased_at: datetime
    state: LeaseState = LeaseState.OFFERED
    backup: bool = False  # a speculative copy racing its twin, the primary
    twin: str | None = None  # the other copy's name while both are live
    backed_up: bool = False  # had a backup: one per lease, so a lease id is never reused

    @property
    def name(self) -> str:
        # A backup keeps its primary's attempt (the same attempt, run twice), not its name.
        return f"{self.start}-{self.attempt}" + ("s" if self.backup else "")

    @property
    def holds(self) -> bool:
        """Whether this lease holds its indices: a primary, or a backup whose twin is gone."""
        return not self.backup or self.twin is None

    @property
    def span(self) -> IndexRanges:
        return IndexRanges.span(self.start, self.start + self.count)

    def _leave(self, to: LeaseState) -> None:
        if not self.state.live:
            raise IllegalTransition(f"lease {self.name} is {self.state}, cannot become {to}")
        self.state = to

    def renew(self, now: datetime, seconds: float) -> None:
        self._leave(LeaseState.LEASED)
        self.expires = now + timedelta(seconds=seconds)

    def reported(self, kind: ExitKind, report: Report | None, now: datetime, why: str) -> Attempt:
        """REPORTED: the attempt the run engine judges (how it ended, as the worker said)."""
        self._leave(LeaseState.REPORTED)
        infra = why or "the worker reported an infrastructure failure"
        return self._attempt(kind, report, now, infra if kind is ExitKind.INFRA else None)

    def expire(self, now: datetime) -> Attempt:
        """EXPIRED: an infrastructure failure of its attempt, as a pod lost with its node."""
        self._leave(LeaseState.EXPIRED)
        why = f"lease expired: worker {self.worker} stopped heartbeating"
        return self._attempt(ExitKind.INFRA, None, now, why)

    def revoke(self) -> None:
        """LOST: taken back; its worker stops, and its indices are nobody's attempt now."""
        self._leave(LeaseState.LOST)

    def _attempt(
        self, kind: ExitKind, report: Report | None, now: datetime, infra_reason: str | None
    ) -> Attempt:
        ok = kind is ExitKind.OK
        return Attempt(
            name=self.name,
            start=self.start,
            count=self.count,
            attempt=self.attempt,
            failures=self.failures,
            infra_failures=self.infra_failures,
            state=AttemptState.SUCCEEDED if ok else AttemptState.FAILED,
            infra_reason=infra_reason,
            report=report,
            finished_at=now,
            ended=kind,
        )


@dataclass
class Pending:
    """Indices to lease, with the attempt metadata of their next lease."""

    ranges: IndexRanges
    attempt: int
    failures: int = 0
    infra_failures: int = 0
    due: datetime | None = None  # a retry's backoff; None: now

    def take(self, size: int) -> tuple[int, int]:
        """The first `size` indices of the lowest interval: (start, count); they leave."""
        lo, hi = self.ranges.intervals[0]
        count = max(1, min(size, hi - lo))
        self.ranges = self.ranges - IndexRanges.span(lo, lo + count)
        return lo, count
