"""What finished attempts tell the task's status summary and the operator's metrics.

Both controllers learn of each finished attempt once, with the worker's own account of it:
a pod's termination line (`tasks/reconcile`, when the pod's outcome is recorded and the pod
released or deleted) and a pool worker's lease report (`pools/dispatch`, when the lease is
judged). That account carries the slice's timing record (the one the worker also writes to
`<task>/timings/`), so the summary below is built from what arrives anyway: no store read,
no record read twice, no extra API call. It is written only with the status patches the
controllers make for other reasons.

The running totals are in memory, O(workers) per task (at most MAX_WORKERS kept: the
fastest are dropped first, so the slowest is never lost). After an operator restart the
summary counts the slices that end from then on; the status keeps the last summary until
one of them arrives. `kubemap timeline` reads every record from the store for the full story.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubemap.core.attempts import Attempt, AttemptState
from kubemap.core.plan import attempt_outcome
from kubemap.core.policy import ExitKind
from kubemap.core.ranges import IndexRanges
from kubemap.resources.maptask import MapTaskStatus, TimingSummary
from kubemap.task.timings import SliceTiming, quantile

from kubemap_operator import metrics

MAX_WORKERS = 512
STORE_CAUSES = frozenset({"store", "corrupt", "tampered"})  # a worker's store-error kinds
TaskKey = tuple[str, str]  # namespace, name


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


@dataclass
class Totals:
    """One task's slices so far, merged: enough for its summary, bounded."""

    items: int = 0
    first: float = math.inf
    last: float = 0.0
    buckets: dict[int, int] = field(default_factory=dict)
    workers: dict[str, tuple[int, float]] = field(default_factory=dict)  # items, compute

    def add(self, timing: SliceTiming) -> None:
        self.items += timing.ran
        self.first, self.last = min(self.first, timing.start), max(self.last, timing.end)
        for bucket, n in timing.buckets.items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + n
        if timing.ran:
            items, compute = self.workers.get(timing.worker, (0, 0.0))
            self.workers[timing.worker] = (items + timing.ran, compute + timing.compute)
            if len(self.workers) > MAX_WORKERS:
                fastest = min(self.workers, key=lambda w: self.workers[w][1] / self.workers[w][0])
                del self.workers[fastest]

    def summary(self) -> TimingSummary:
        wall = self.last - self.first
        slowest = max(self.workers.items(), key=lambda w: w[1][1] / w[1][0], default=None)
        p50, p95 = quantile(self.buckets, 0.5), quantile(self.buckets, 0.95)
        return TimingSummary(
            items=self.items,
            items_per_second=_significant(self.items / wall) if wall > 0 else None,
            p50_seconds=_significant(p50) if p50 is not None else None,
            p95_seconds=_significant(p95) if p95 is not None else None,
            slowest_worker=slowest[0][:253] if slowest else None,
            slowest_worker_seconds_per_item=(
                _significant(slowest[1][1] / slowest[1][0]) if slowest else None
            ),
        )


class TaskTimings:
    """Running totals per task, fed by finished attempts, read when the status is written."""

    def __init__(self) -> None:
        self._tasks: dict[TaskKey, Totals] = {}

    def add(self, key: TaskKey, timing: SliceTiming) -> None:
        self._tasks.setdefault(key, Totals()).add(timing)

    def summary(self, key: TaskKey) -> TimingSummary | None:
        totals = self._tasks.get(key)
        return totals.summary() if totals is not None and totals.items else None

    def with_summary(self, key: TaskKey, status: MapTaskStatus) -> MapTaskStatus:
        """The status about to be written, with the task's summary (unchanged if none yet)."""
        summary = self.summary(key)
        if summary is None or summary == status.timing:
            return status
        return status.model_copy(update={"timing": summary})

    def forget(self, key: TaskKey) -> None:
        self._tasks.pop(key, None)


TIMINGS = TaskTimings()  # the operator's one instance, as metrics.REGISTRY is


def timings_of(attempt: Attempt) -> list[SliceTiming]:
    texts = attempt.report.timings if attempt.report is not None else ()
    return [t for t in (SliceTiming.decode(text.encode()) for text in texts) if t is not None]


def unfinished(attempt: Attempt, span: IndexRanges) -> tuple[IndexRanges, dict[str, IndexRanges]]:
    """(succeeded, failed by failure class) of the attempt's span, read as core.plan.judge
    reads it (core.plan.attempt_outcome); what got no answer is the usage or infra class."""
    kind = attempt.kind()
    ok, user = attempt_outcome(attempt, span)
    failed = {ExitKind.USER.value: user} if user else {}
    rest = span - ok - user
    if rest:
        other = ExitKind.USAGE if kind is ExitKind.USAGE else ExitKind.INFRA
        failed[other.value] = rest
    return ok, failed


def record_attempt(
    key: TaskKey,
    pool: str,
    attempt: Attempt,
    span: IndexRanges,
    final_failed: IndexRanges,
    rerun: IndexRanges | None = None,
) -> None:
    """Count one finished attempt, once: its items (succeeded; failed for good, or retried
    if in `rerun` (None: every failed item not failed for good), by failure class), its
    timing record (status summary, duration histograms) and a store error its worker
    reported. Items of a task that ended meanwhile are neither: they were not run."""
    if attempt.state is AttemptState.ACTIVE:
        return
    namespace = key[0]
    ok, failed = unfinished(attempt, span)
    metrics.count_items(namespace, pool, ok=len(ok))
    for failure_class, ranges in failed.items():
        again = ranges - final_failed if rerun is None else ranges & rerun
        metrics.count_items(
            namespace,
            pool,
            failure_class=failure_class,
            failed=len(ranges & final_failed),
            retried=len(again),
        )
    for timing in timings_of(attempt):
        TIMINGS.add(key, timing)
        metrics.observe_slice(namespace, pool, timing.seconds, timing.buckets)
    cause = attempt.infra_cause()
    if cause is not None and cause.kind in STORE_CAUSES:
        metrics.STORE_ERRORS.labels(namespace=namespace, pool=pool, kind=cause.kind).inc()


def pod_start_seconds(pod: Mapping[str, Any]) -> float | None:
    """Creation to the worker container's start (scheduling, image pull, start-up)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    created = meta.get("creationTimestamp")
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
        if started and created:
            seconds = (_time(started) - _time(created)).total_seconds()
            return seconds if seconds >= 0 else None
    return None


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


class PodRecorder:
    """Counts each pod of a task once, when the plan records it (releases or deletes it)."""

    def __init__(self) -> None:
        self._seen: dict[TaskKey, set[str]] = {}

    def recorded(
        self,
        key: TaskKey,
        attempts: Iterable[Attempt],
        pods: Iterable[Mapping[str, Any]],
        names: Iterable[str],
        status: MapTaskStatus,
    ) -> None:
        by_name = {str((p.get("metadata") or {}).get("name")): p for p in pods}
        seen = self._seen.setdefault(key, set()) & set(by_name)  # bounded by the live pods
        final = IndexRanges.parse(status.failed_indexes)
        rerun = IndexRanges() if status.phase.finished else None  # an ended task runs nothing
        wanted = set(names) - seen
        for attempt in attempts:
            if attempt.name in wanted and attempt.state is not AttemptState.ACTIVE:
                seen.add(attempt.name)
                record_attempt(key, "", attempt, attempt.span, final, rerun)
                started = pod_start_seconds(by_name.get(attempt.name) or {})
                if started is not None:
                    metrics.POD_START_SECONDS.labels(namespace=key[0]).observe(started)
        self._seen[key] = seen

    def forget(self, key: TaskKey) -> None:
        self._seen.pop(key, None)
