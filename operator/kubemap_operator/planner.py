"""The pure reconcile core: plan(spec, status, observed pods, now) -> Plan. No I/O here.

Every index is in exactly one place: recorded in the status (succeeded or failed for good),
owned by its latest pod (the pod with the highest attempt covering it: running, finished
and waiting to be recorded, or failed and waiting for its retry), or not started yet.
A pod's outcome is written to the status before its finalizer goes, and recording is a
union of index ranges, so recording twice after an operator restart changes nothing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from kubemap.models import MapTaskSpec, MapTaskStatus, Phase
from kubemap.policy import (
    BACKOFF_BASE_SECONDS,
    INFRA_RETRY_LIMIT,
    FailureBudget,
    classify_exit,
    retry_delay,
)
from kubemap.ranges import IndexRanges

from kubemap_operator.finishing import after_finish, cleanup
from kubemap_operator.observe import ObservedPod, PodState, parse_time
from kubemap_operator.plantypes import DEFAULT_LIMITS, Event, Limits, Plan, PodRequest
from kubemap_operator.status import (
    clip,
    describe,
    rfc3339,
    set_condition,
    within,
)

__all__ = ["Event", "Limits", "Plan", "PodRequest", "plan"]


@dataclass
class _Retry:
    ranges: IndexRanges
    attempt: int
    failures: int
    infra_failures: int
    due: datetime


@dataclass
class _Outcome:
    """What the finished pods say, before it is written to the status."""

    succeeded: IndexRanges = field(default_factory=IndexRanges)
    failed: IndexRanges = field(default_factory=IndexRanges)
    running: IndexRanges = field(default_factory=IndexRanges)
    retries: list[_Retry] = field(default_factory=list)
    deferred: set[str] = field(default_factory=set)  # pods kept as the record of a success
    waiting: set[str] = field(default_factory=set)  # pods kept as the record of a retry
    failure_notes: list[str] = field(default_factory=list)
    usage_error: str | None = None
    too_scattered: bool = False


def _upd(status: MapTaskStatus, **changes: object) -> MapTaskStatus:
    return status.model_copy(update=changes)


def _backoff(failures: int, limits: Limits) -> float:
    return retry_delay(failures) * (limits.backoff_base_seconds / BACKOFF_BASE_SECONDS)


def _latest_spans(
    pods: list[ObservedPod], done: IndexRanges
) -> list[tuple[ObservedPod, IndexRanges]]:
    """Each pod with the indices it is the latest pod for and that are not recorded yet.

    For one index, a newer pod always has a higher attempt than every older pod covering it."""
    by_start = sorted(pods, key=lambda p: p.start)
    starts = [p.start for p in by_start]
    widest = max((p.count for p in pods), default=1)
    out: list[tuple[ObservedPod, IndexRanges]] = []
    for pod in sorted(pods, key=lambda p: (-p.attempt, p.start, p.name)):
        end = pod.start + pod.count
        lo = bisect.bisect_left(starts, pod.start - widest + 1)
        hi = bisect.bisect_left(starts, end)
        newer = IndexRanges.from_spans(
            (q.start, q.start + q.count)
            for q in by_start[lo:hi]
            if q.attempt > pod.attempt and q.start < end and q.start + q.count > pod.start
        )
        out.append((pod, pod.span - within(done, pod.start, end) - newer))
    return out


def _judge(
    spans: list[tuple[ObservedPod, IndexRanges]],
    spec: MapTaskSpec,
    succeeded: IndexRanges,
    failed: IndexRanges,
    now: datetime,
    limits: Limits,
) -> _Outcome:
    out = _Outcome(succeeded=succeeded, failed=failed)
    successes: list[tuple[str, IndexRanges]] = []
    final: list[IndexRanges] = []
    for pod, mine in spans:
        if not mine:
            continue
        if pod.state is PodState.ACTIVE:
            out.running = out.running | mine
            continue
        kind = "ok" if pod.state is PodState.SUCCEEDED else classify_exit(pod.exit_code)
        if pod.infra_reason is not None:
            kind = "infra"
        elif kind == "ok" and pod.state is PodState.FAILED:
            kind = "infra"  # failed phase with exit 0: the platform killed a finished container
        report = pod.report
        if report is not None:
            ok, user = mine & report.succeeded, mine & report.failed
        elif kind == "ok":
            ok, user = mine, IndexRanges()
        elif kind == "user":
            ok, user = IndexRanges(), mine
        else:
            ok, user = IndexRanges(), IndexRanges()
        rest = mine - ok - user  # indices the pod never reported: not the user's fault
        if kind == "usage" and out.usage_error is None:
            out.usage_error = (
                f"pod {pod.name} exited with code {pod.exit_code} (usage error): the worker's "
                f"environment breaks the kubemap contract; see `kubectl logs {pod.name}`"
            )
        if ok:
            successes.append((pod.name, ok))
        finished = pod.finished_at or now
        if user:
            failures = pod.failures + 1
            if failures > spec.backoff_limit_per_index:
                final.append(user)
                out.failure_notes.append(
                    f"indices {describe(user)} failed after {failures} attempt(s) "
                    f"(pod {pod.name}, exit code {pod.exit_code})"
                )
            else:
                due = finished + timedelta(seconds=_backoff(failures, limits))
                out.retries.append(_Retry(user, pod.attempt + 1, failures, pod.infra_failures, due))
                out.waiting.add(pod.name)
        if rest:
            infra = pod.infra_failures + 1
            if infra > INFRA_RETRY_LIMIT:
                final.append(rest)
                out.failure_notes.append(
                    f"indices {describe(rest)} lost {infra} pods to infrastructure failures "
                    f"(last: {pod.infra_reason or f'exit code {pod.exit_code}'})"
                )
            else:
                # The first replacement is immediate (a pod deleted, a node lost); later ones
                # back off like user retries, so a store outage of a minute is ridden out.
                due = finished + timedelta(seconds=_backoff(infra - 1, limits))
                out.retries.append(_Retry(rest, pod.attempt + 1, pod.failures, infra, due))
                out.waiting.add(pod.name)
    out.failed = IndexRanges.from_spans(
        [*failed.intervals, *(iv for r in final for iv in r.intervals)]
    )
    merged = IndexRanges.from_spans(
        [*succeeded.intervals, *(iv for _, r in successes for iv in r.intervals)]
    )
    if len(merged.intervals) <= limits.max_succeeded_ranges:
        out.succeeded = merged
    else:  # rare: record what keeps the ranges bounded, keep the other pods as records
        for name, ok in successes:
            candidate = out.succeeded | ok
            if len(candidate.intervals) <= limits.max_succeeded_ranges:
                out.succeeded = candidate
            else:
                out.deferred.add(name)
    if len(out.failed.intervals) > limits.max_failed_ranges:
        out.too_scattered = True
        out.failed = failed  # keep the status bounded; the store's error records hold them all
    return out


def _chunks(ranges: IndexRanges, size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in ranges.intervals:
        out.extend((s, min(size, hi - s)) for s in range(lo, hi, size))
    return out


def _requests(
    spec: MapTaskSpec,
    outcome: _Outcome,
    pending: IndexRanges,
    capacity: int,
    now: datetime,
    hole_limit: int | None,
) -> tuple[list[PodRequest], float | None]:
    """Retries that are due first (lowest index first), then pods for indices never started."""
    wanted: list[PodRequest] = []
    next_due: float | None = None
    for retry in sorted(outcome.retries, key=lambda r: r.ranges.intervals[0]):
        if retry.due > now:
            wait = (retry.due - now).total_seconds()
            next_due = wait if next_due is None else min(next_due, wait)
            continue
        for start, count in _chunks(retry.ranges, spec.items_per_pod):
            wanted.append(
                PodRequest(start, count, retry.attempt, retry.failures, retry.infra_failures)
            )
    for lo, hi in pending.intervals:
        if len(wanted) >= capacity:
            break
        for start in range(lo, hi, spec.items_per_pod):
            if len(wanted) >= capacity or (hole_limit is not None and start >= hole_limit):
                break
            wanted.append(PodRequest(start, min(spec.items_per_pod, hi - start)))
    return wanted[: max(0, capacity)], next_due


def plan(
    spec: MapTaskSpec,
    status: MapTaskStatus,
    pods: list[ObservedPod],
    now: datetime,
    *,
    generation: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Plan:
    total = spec.total
    succeeded = IndexRanges.parse(status.succeeded_indexes)
    failed = IndexRanges.parse(status.failed_indexes)
    base = _upd(
        status,
        total=total,
        start_time=status.start_time or rfc3339(now),
        observed_generation=generation if generation is not None else status.observed_generation,
    )
    if status.phase.finished:
        return after_finish(spec, base, pods, now, limits)

    done = succeeded | failed
    spans = _latest_spans(pods, done)
    outcome = _judge(spans, spec, succeeded, failed, now, limits)
    active = [p for p in pods if p.state is PodState.ACTIVE]
    everything = IndexRanges.span(0, total)
    recorded = outcome.succeeded | outcome.failed
    covered = IndexRanges.from_spans(iv for p in pods for iv in p.span.intervals)
    pending = everything - recorded - covered
    budget = FailureBudget.of(
        total, min_success_ratio=spec.min_success_ratio, max_failed_indexes=spec.max_failed_indexes
    )
    n_failed = len(outcome.failed)
    events: list[Event] = []
    new_failed = outcome.failed - failed
    if new_failed:
        events.append(Event("Warning", "IndexFailed", clip("; ".join(outcome.failure_notes), 1000)))

    start = parse_time(base.start_time) or now
    verdict: tuple[Phase, str, str] | None = None  # phase, reason, message
    if spec.suspend:
        verdict = (
            Phase.CANCELLED,
            "Suspended",
            "cancelled: spec.suspend is true; active pods were deleted",
        )
    elif outcome.usage_error:
        verdict = (Phase.FAILED, "UsageError", outcome.usage_error)
    elif outcome.too_scattered:
        verdict = (
            Phase.FAILED,
            "TooManyFailedRanges",
            f"failures are scattered over more than {limits.max_failed_ranges} separate index ranges, "
            "more than the status can track; the task stops. Fix the failing inputs or lower "
            "minSuccessRatio/maxFailedIndexes so that the task fails sooner",
        )
    elif budget.exceeded(n_failed):
        verdict = (
            Phase.FAILED,
            "FailedIndexes",
            f"{n_failed} of {total} indices failed, more than the {budget.allowed} allowed "
            f"(minSuccessRatio={spec.min_success_ratio}, maxFailedIndexes={spec.max_failed_indexes}); "
            + "; ".join(outcome.failure_notes)[:600],
        )
    elif spec.active_deadline_seconds is not None and now >= start + timedelta(
        seconds=spec.active_deadline_seconds
    ):
        verdict = (
            Phase.FAILED,
            "DeadlineExceeded",
            f"the task ran longer than activeDeadlineSeconds={spec.active_deadline_seconds}; "
            f"{len(everything - recorded)} indices did not finish",
        )
    elif len(recorded) >= total:
        tolerated = f" ({n_failed} failed indices tolerated)" if n_failed else ""
        verdict = (
            Phase.SUCCEEDED,
            "Completed",
            f"{len(outcome.succeeded)} of {total} indices succeeded{tolerated}",
        )

    status_out = _upd(
        base,
        succeeded=len(outcome.succeeded),
        failed=n_failed,
        active=len(active),
        succeeded_indexes=str(outcome.succeeded),
        failed_indexes=str(outcome.failed),
    )
    if verdict is not None:
        phase, reason, message = verdict
        kind = {Phase.SUCCEEDED: "Complete", Phase.FAILED: "Failed", Phase.CANCELLED: "Suspended"}[
            phase
        ]
        status_out = _upd(
            status_out,
            phase=phase,
            message=clip(message),
            completion_time=rfc3339(now),
            conditions=set_condition(
                list(status_out.conditions), kind, reason=reason, message=message, now=now
            ),
        )
        events.append(
            Event(
                "Normal" if phase is Phase.SUCCEEDED else "Warning",
                phase.value,
                clip(message, 1000),
            )
        )
        finished = after_finish(spec, status_out, pods, now, limits)
        return replace(finished, events=tuple(events) + finished.events)

    capacity = spec.parallelism - len(active)
    kept_records = outcome.deferred | outcome.waiting
    hole_limit: int | None = None
    if len(outcome.deferred) >= spec.parallelism:
        # Back-pressure: successes wait for their neighbours; start only pods that fill holes.
        hole_limit = max(p.start for p in pods if p.name in outcome.deferred)
    creates, next_due = _requests(spec, outcome, pending, capacity, now, hole_limit)
    if spec.active_deadline_seconds is not None:  # wake up for the deadline, not a timer tick later
        left = (start + timedelta(seconds=spec.active_deadline_seconds) - now).total_seconds()
        next_due = left if next_due is None else min(next_due, left)
    release, delete = cleanup(pods, spans, outcome.succeeded | outcome.failed, kept_records, limits)
    status_out = _upd(
        status_out,
        phase=Phase.RUNNING if (pods or creates) else Phase.PENDING,
        message=None,
    )
    return Plan(
        status=status_out,
        create=tuple(creates),
        release=tuple(release),
        delete=tuple(delete),
        events=tuple(events),
        requeue_after=next_due,
    )
