"""Leases of one pool task, as the run engine's plan sees them (pure, no I/O).

A lease is an attempt of the slice [start, start+count), exactly as a pod is in pod mode,
so the same plan() decides retries, failure budgets and the verdict: a lease is turned into
the ObservedPod the planner reads. A lease that expires without a heartbeat is an
infrastructure failure of its attempt (a lost pod), which spends no user retry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kubemap.contract import EXIT_INFRA_ERROR, EXIT_OK, EXIT_USAGE_ERROR, EXIT_USER_ERROR

from kubemap_operator.tasks.observe import ObservedPod, PodState, WorkerReport

GUIDED_K = 1  # OpenMP guided: chunk = remaining / (k x workers)
# A chunk costs a few round trips (lease, two ranged GETs, a result PUT, the report: tens of
# ms); the floor keeps each chunk at least this much work, so the tail stays cheap.
MIN_CHUNK_SECONDS = 0.25


@dataclass
class Lease:
    start: int
    count: int
    attempt: int
    failures: int
    infra_failures: int
    worker: str
    expires: datetime
    leased_at: datetime | None = None
    state: PodState = PodState.ACTIVE
    exit_code: int | None = None
    infra_reason: str | None = None
    report: WorkerReport | None = None
    finished_at: datetime | None = None
    revoked: bool = False  # taken back: its worker stops and reports what it kept

    @property
    def name(self) -> str:
        return f"{self.start}-{self.attempt}"

    def observed(self) -> ObservedPod:
        return ObservedPod(
            name=self.name,
            start=self.start,
            count=self.count,
            attempt=self.attempt,
            failures=self.failures,
            infra_failures=self.infra_failures,
            state=self.state,
            exit_code=self.exit_code,
            infra_reason=self.infra_reason,
            report=self.report,
            finished_at=self.finished_at,
        )

    def finish(self, kind: str, report: WorkerReport | None, now: datetime, why: str = "") -> None:
        """The worker's outcome: 'ok', 'user', 'infra' or 'usage' (as classify_exit says).

        'usage' is what no retry cures (pip cannot install the task's packages): the plan
        fails the task at once with the worker's words, as for a pod's usage error."""
        self.state = PodState.SUCCEEDED if kind == "ok" else PodState.FAILED
        codes = {"ok": EXIT_OK, "user": EXIT_USER_ERROR, "usage": EXIT_USAGE_ERROR}
        self.exit_code = codes.get(kind, EXIT_INFRA_ERROR)
        self.report = report
        self.finished_at = now
        if kind == "infra":
            self.infra_reason = why or "the worker reported an infrastructure failure"

    def expire_if_due(self, now: datetime) -> bool:
        if self.state is PodState.ACTIVE and now >= self.expires:
            self.finish(
                "infra", None, now, f"lease expired: worker {self.worker} stopped heartbeating"
            )
            return True
        return False

    def renew(self, now: datetime, seconds: float) -> None:
        self.expires = now + timedelta(seconds=seconds)


@dataclass
class Leases:
    """Every lease of one task that the plan still needs to see, by name."""

    by_name: dict[str, Lease] = field(default_factory=dict)

    def observed(self) -> list[ObservedPod]:
        return [lease.observed() for lease in self.by_name.values()]

    def active(self) -> list[Lease]:
        return [lease for lease in self.by_name.values() if lease.state is PodState.ACTIVE]

    def expire(self, now: datetime) -> list[Lease]:
        return [lease for lease in self.by_name.values() if lease.expire_if_due(now)]

    def drop(self, names: tuple[str, ...] | list[str]) -> None:
        for name in names:
            self.by_name.pop(name, None)


def chunk_floor(seconds_per_item: float | None) -> int:
    """Smallest chunk worth a lease: MIN_CHUNK_SECONDS of measured work (1 before a measure)."""
    if not seconds_per_item or seconds_per_item <= 0:
        return 1
    return max(1, min(100_000, math.ceil(MIN_CHUNK_SECONDS / seconds_per_item)))


def guided_chunk(remaining: int, workers: int, *, floor: int = 1, cap: int = 100_000) -> int:
    """Guided self-scheduling: big chunks first, small at the end, so no worker straggles.

    remaining / (GUIDED_K x workers), never below floor, never above cap or remaining."""
    if remaining <= 0:
        return max(1, floor)
    size = math.ceil(remaining / (GUIDED_K * max(1, workers)))
    return max(1, min(remaining, cap, max(floor, size)))
