"""plan(rules, recorded, attempts, now) -> Decision: the run engine's one decider. No I/O.

Every index is in exactly one place: recorded (succeeded or failed for good), owned by its
latest attempt (the attempt with the highest number covering it: running, finished and
waiting to be recorded, or failed and waiting for its retry), or not started yet. Recording
is a union of index ranges, so recording twice (after a restart) changes nothing.

Backends execute the decision: the operator creates pods for `start`, the local backend
sends them to worker processes, a warm pool offers them for lease. What to do with finished
attempts (delete a pod, forget a job) is the backend's; `kept` names those that must stay
because they are the only record of an outcome.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kubemap.core.attempts import Attempt, AttemptState, SliceRequest
from kubemap.core.parallelism import DEFAULT_PARALLELISM
from kubemap.core.policy import (
    BACKOFF_BASE_SECONDS,
    INFRA_RETRY_LIMIT,
    Cause,
    ExitKind,
    FailureBudget,
    hint,
    requeued,
    retry_delay,
    systematic_cause,
)
from kubemap.core.ranges import IndexRanges, describe, within
from kubemap.core.status import Phase, Reason, outcome_message

# Status bounds (see kubemap_operator/status.py for why they keep a MapTask small).
MAX_SUCCEEDED_RANGES = 2000
MAX_FAILED_RANGES = 1000


@dataclass(frozen=True)
class Rules:
    """What the task asks for: its size, slicing, concurrency and failure policy."""

    total: int
    items_per_slice: int = 1
    parallelism: int = DEFAULT_PARALLELISM
    retries: int = 0  # per index (backoffLimitPerIndex)
    min_success_ratio: float = 1.0
    max_failed_indexes: int | None = None
    deadline_seconds: float | None = None
    cancelled: bool = False
    backoff_base_seconds: float = BACKOFF_BASE_SECONDS
    max_succeeded_ranges: int = MAX_SUCCEEDED_RANGES
    max_failed_ranges: int = MAX_FAILED_RANGES


@dataclass(frozen=True)
class Recorded:
    """What the task has recorded so far (the MapTask status, or the local run's memory)."""

    succeeded: IndexRanges = field(default_factory=IndexRanges)
    failed: IndexRanges = field(default_factory=IndexRanges)
    started_at: datetime | None = None


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    reason: Reason
    message: str
    cause: Cause | None = None


@dataclass(frozen=True)
class Decision:
    succeeded: IndexRanges
    failed: IndexRanges
    active: int  # attempts running
    verdict: Verdict | None = None
    start: tuple[SliceRequest, ...] = ()
    next_due: float | None = None  # seconds until a retry or the deadline is due
    kept: frozenset[str] = frozenset()  # finished attempts that still hold an outcome
    spans: tuple[tuple[Attempt, IndexRanges], ...] = ()  # each attempt's unrecorded indices
    failure_notes: tuple[str, ...] = ()  # new final failures, for an event
    infra_note: str | None = None  # the last infrastructure cause, for an event
    # What counts as failed if the task stops now (see stopped_failures): `failed` itself
    # once a verdict stops the task.
    stopped: IndexRanges = field(default_factory=IndexRanges)


@dataclass
class Retry:
    ranges: IndexRanges
    attempt: int
    failures: int
    infra_failures: int
    due: datetime
    requeue: bool = False  # preempted, not failed: see policy.requeued


@dataclass
class Outcome:
    succeeded: IndexRanges
    failed: IndexRanges
    retries: list[Retry] = field(default_factory=list)
    deferred: set[str] = field(default_factory=set)  # attempts kept as the record of a success
    waiting: set[str] = field(default_factory=set)  # attempts kept as the record of a retry
    notes: list[str] = field(default_factory=list)
    first_error: tuple[int, str] | None = None  # (index, "Type: message") of a final failure
    causes: list[Cause] = field(default_factory=list)
    usage_error: str | None = None
    too_scattered: bool = False


def latest_spans(attempts: list[Attempt], done: IndexRanges) -> list[tuple[Attempt, IndexRanges]]:
    """Each attempt with the indices it is the latest attempt for and that are not recorded.

    For one index, a newer attempt always has a higher number than every older one."""
    by_start = sorted(attempts, key=lambda a: a.start)
    starts = [a.start for a in by_start]
    widest = max((a.count for a in attempts), default=1)
    out: list[tuple[Attempt, IndexRanges]] = []
    for one in sorted(attempts, key=lambda a: (-a.attempt, a.start, a.name)):
        end = one.start + one.count
        lo = bisect.bisect_left(starts, one.start - widest + 1)
        hi = bisect.bisect_left(starts, end)
        newer = IndexRanges.from_spans(
            (q.start, q.start + q.count)
            for q in by_start[lo:hi]
            if q.attempt > one.attempt and q.start < end and q.start + q.count > one.start
        )
        out.append((one, one.span - within(done, one.start, end) - newer))
    return out


def attempt_outcome(attempt: Attempt, span: IndexRanges) -> tuple[IndexRanges, IndexRanges]:
    """(succeeded, failed by the user's code) of a finished attempt's span: the worker's own
    report first, else its exit. The rest of the span never got an answer."""
    kind, report = attempt.kind(), attempt.report
    if report is not None:
        return span & report.succeeded, span & report.failed
    if kind is ExitKind.OK:
        return span, IndexRanges()
    if kind is ExitKind.USER:
        return IndexRanges(), span
    return IndexRanges(), IndexRanges()


def judge(
    spans: list[tuple[Attempt, IndexRanges]], rules: Rules, recorded: Recorded, now: datetime
) -> Outcome:
    """What finished attempts mean for their unrecorded indices: recorded successes, final
    failures, retries (when due) and causes. A backend that learns of one attempt's end at a
    time (the warm-pool dispatcher) judges just that attempt."""
    out = Outcome(succeeded=recorded.succeeded, failed=recorded.failed)
    successes: list[tuple[str, IndexRanges]] = []
    final: list[IndexRanges] = []
    for one, mine in spans:
        if not mine or one.state is AttemptState.ACTIVE:
            continue
        kind, report = one.kind(), one.report
        ok, user = attempt_outcome(one, mine)
        rest = mine - ok - user  # indices the attempt never reported: not the user's fault
        if kind is ExitKind.USAGE and out.usage_error is None:
            detail = None
            if report is not None:  # the worker's own words: "Python 3.12 here, 3.11 in the SDK"
                detail = report.error or (report.cause.message if report.cause else None)
            out.usage_error = f"{one.describe()}: {one.ending()} (usage error): " + (
                detail or "the worker's environment breaks the kubemap contract"
            )
        if ok:
            successes.append((one.name, ok))
        finished = one.finished_at or now
        if user:
            failures = one.failures + 1
            if failures > rules.retries:
                final.append(user)
                error = report.error if report is not None else None
                if error and out.first_error is None:
                    out.first_error = (user.intervals[0][0], error)
                out.notes.append(
                    f"indices {describe(user)} failed after {failures} attempt(s) "
                    f"({one.describe()}: {one.ending()}{': ' + error if error else ''})"
                )
            else:
                due = finished + timedelta(
                    seconds=retry_delay(failures, rules.backoff_base_seconds)
                )
                out.retries.append(Retry(user, one.attempt + 1, failures, one.infra_failures, due))
                out.waiting.add(one.name)
        if rest and requeued(one.infra_cause()):
            # Preempted: run again at once, with the same failure counts (nothing spent).
            out.retries.append(
                Retry(rest, one.attempt + 1, one.failures, one.infra_failures, finished, True)
            )
            out.waiting.add(one.name)
        elif rest:
            cause = one.infra_cause()
            if cause is not None:
                out.causes.append(cause)
            infra = one.infra_failures + 1
            if cause is not None and cause.kind == "corrupt":
                # The slice's own data cannot be loaded: no retry can cure that.
                final.append(rest)
                out.notes.append(f"indices {describe(rest)} cannot run: {cause}")
                if out.first_error is None:
                    out.first_error = (rest.intervals[0][0], str(cause))
            elif infra > INFRA_RETRY_LIMIT:
                final.append(rest)
                out.notes.append(
                    f"indices {describe(rest)} lost {infra} attempts to infrastructure failures "
                    f"(last: {cause or one.ending()})"
                )
            else:
                # A lost pod (deleted, evicted, node gone) is replaced at once, and so is the
                # first infrastructure failure of a slice; later ones back off like user
                # retries (10 s, 20 s, 40 s ...): a store outage of a minute is ridden out,
                # and a systematic cause shows on the whole second wave before more is spent.
                lost = cause is not None and cause.kind == "lost"
                wait = 0.0 if lost else retry_delay(infra - 1, rules.backoff_base_seconds)
                due = finished + timedelta(seconds=wait)
                out.retries.append(Retry(rest, one.attempt + 1, one.failures, infra, due))
                out.waiting.add(one.name)
    out.failed = IndexRanges.from_spans(
        [*recorded.failed.intervals, *(iv for r in final for iv in r.intervals)]
    )
    merged = IndexRanges.from_spans(
        [*recorded.succeeded.intervals, *(iv for _, r in successes for iv in r.intervals)]
    )
    if len(merged.intervals) <= rules.max_succeeded_ranges:
        out.succeeded = merged
    else:  # rare: record what keeps the ranges bounded, keep the other attempts as records
        for name, ok in successes:
            candidate = out.succeeded | ok
            if len(candidate.intervals) <= rules.max_succeeded_ranges:
                out.succeeded = candidate
            else:
                out.deferred.add(name)
    if len(out.failed.intervals) > rules.max_failed_ranges:
        out.too_scattered = True
        out.failed = recorded.failed  # keep the status bounded; error records hold them all
    return out


def _chunks(ranges: IndexRanges, size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in ranges.intervals:
        out.extend((s, min(size, hi - s)) for s in range(lo, hi, size))
    return out


def _requests(
    rules: Rules,
    outcome: Outcome,
    pending: IndexRanges,
    capacity: int,
    now: datetime,
    hole_limit: int | None,
) -> tuple[list[SliceRequest], float | None]:
    """Retries that are due first (lowest index first), then slices never started."""
    wanted: list[SliceRequest] = []
    next_due: float | None = None
    size = max(1, rules.items_per_slice)
    for retry in sorted(outcome.retries, key=lambda r: r.ranges.intervals[0]):
        if retry.due > now:
            wait = (retry.due - now).total_seconds()
            next_due = wait if next_due is None else min(next_due, wait)
            continue
        for start, count in _chunks(retry.ranges, size):
            wanted.append(
                SliceRequest(
                    start,
                    count,
                    retry.attempt,
                    retry.failures,
                    retry.infra_failures,
                    requeue=retry.requeue,
                )
            )
    for lo, hi in pending.intervals:
        if len(wanted) >= capacity:
            break
        for start in range(lo, hi, size):
            if len(wanted) >= capacity or (hole_limit is not None and start >= hole_limit):
                break
            wanted.append(SliceRequest(start, min(size, hi - start)))
    return wanted[: max(0, capacity)], next_due


def stopped_failures(
    outcome_failed: IndexRanges,
    retries: list[Retry],
    spans: list[tuple[Attempt, IndexRanges]],
    succeeded: IndexRanges,
) -> IndexRanges:
    """What counts as failed if the task stops now: the final failures, and every index
    that failed in the user's code before and whose retry will never come (waiting for it,
    or running it and about to be stopped). Those have an error record and no result, so
    failures() lists them: the status must count them as failed too, not as "not run"
    (issue 18: "1 failed, 2 not run" beside failures() with 3)."""
    pending = [r.ranges for r in retries if r.failures > 0]
    pending += [
        mine for one, mine in spans if one.state is AttemptState.ACTIVE and one.failures > 0
    ]
    spans_all = [*outcome_failed.intervals, *(iv for r in pending for iv in r.intervals)]
    return IndexRanges.from_spans(spans_all) - succeeded


def verdict_of(
    rules: Rules,
    outcome: Outcome,
    recorded_all: IndexRanges,
    now: datetime,
    start: datetime,
    stopped: IndexRanges,
) -> Verdict | None:
    total = rules.total
    n_ok, n_failed = len(outcome.succeeded), len(outcome.failed)

    def say(why: str) -> str:
        # A stop counts, as failed, the indices whose last attempt failed (`stopped`).
        return outcome_message(
            Phase.FAILED, total=total, succeeded=n_ok, failed=len(stopped), why=why
        )

    if rules.cancelled:
        return Verdict(Phase.CANCELLED, Reason.CANCELLED, say("cancelled"))
    if outcome.usage_error:
        return Verdict(Phase.FAILED, Reason.USAGE, say(outcome.usage_error))
    cause = systematic_cause(
        outcome.causes, any_succeeded=bool(outcome.succeeded), parallelism=rules.parallelism
    )
    if cause is not None:
        tip = hint(cause)
        return Verdict(
            Phase.FAILED,
            Reason.SYSTEMATIC,
            say(f"stopped: {cause}" + (f" ({tip})" if tip else "")),
            cause=cause,
        )
    if outcome.too_scattered:
        return Verdict(
            Phase.FAILED,
            Reason.TOO_MANY_FAILED_RANGES,
            say(
                f"stopped: failures are scattered over more than {rules.max_failed_ranges} "
                "separate index ranges, more than the status can track. Fix the failing inputs "
                "or lower minSuccessRatio/maxFailedIndexes so that the task fails sooner"
            ),
        )
    budget = FailureBudget.of(
        total,
        min_success_ratio=rules.min_success_ratio,
        max_failed_indexes=rules.max_failed_indexes,
    )
    if budget.exceeded(n_failed):
        if outcome.first_error is not None:
            index, error = outcome.first_error
            why = f"stopped after index {index} failed ({error})"
        else:
            why = "stopped after " + "; ".join(outcome.notes)[:400]
        rest = (
            f"; {n_failed} failed, more than the {budget.allowed} allowed by "
            f"min_success_ratio={rules.min_success_ratio:g}"
            if budget.allowed
            else ""
        )
        return Verdict(Phase.FAILED, Reason.FAILED_INDEXES, say(why + rest))
    if rules.deadline_seconds is not None and now >= start + timedelta(
        seconds=rules.deadline_seconds
    ):
        return Verdict(
            Phase.FAILED,
            Reason.DEADLINE,
            say(f"stopped at its deadline (timeout={rules.deadline_seconds:g}s)"),
        )
    if len(recorded_all) >= total:
        tolerated = f" ({n_failed} failures tolerated)" if n_failed else ""
        return Verdict(
            Phase.SUCCEEDED,
            Reason.COMPLETED,
            outcome_message(Phase.SUCCEEDED, total=total, succeeded=n_ok, failed=n_failed, why="")
            + tolerated,
        )
    return None


def plan(rules: Rules, recorded: Recorded, attempts: list[Attempt], now: datetime) -> Decision:
    """What to record, what to start, and whether the task is finished."""
    total = rules.total
    done = recorded.succeeded | recorded.failed
    spans = latest_spans(attempts, done)
    outcome = judge(spans, rules, recorded, now)
    active = [a for a in attempts if a.state is AttemptState.ACTIVE]
    recorded_all = outcome.succeeded | outcome.failed
    covered = IndexRanges.from_spans(iv for a in attempts for iv in a.span.intervals)
    pending = IndexRanges.span(0, total) - recorded_all - covered
    start = recorded.started_at or now
    infra_note = next((str(c) for c in reversed(outcome.causes)), None)
    common = {
        "succeeded": outcome.succeeded,
        "failed": outcome.failed,
        "active": len(active),
        "spans": tuple(spans),
        "failure_notes": tuple(outcome.notes),
        "infra_note": infra_note,
    }
    stopped = stopped_failures(outcome.failed, outcome.retries, spans, outcome.succeeded)
    common["stopped"] = stopped
    verdict = verdict_of(rules, outcome, recorded_all, now, start, stopped)
    if verdict is not None:
        if verdict.phase is not Phase.SUCCEEDED:
            common["failed"] = stopped
        return Decision(verdict=verdict, **common)  # type: ignore[arg-type]
    capacity = rules.parallelism - len(active)
    hole_limit: int | None = None
    if len(outcome.deferred) >= rules.parallelism:
        # Back-pressure: successes wait for their neighbours; start only slices that fill holes.
        hole_limit = max(a.start for a in attempts if a.name in outcome.deferred)
    creates, next_due = _requests(rules, outcome, pending, capacity, now, hole_limit)
    if rules.deadline_seconds is not None:  # wake up for the deadline, not a tick later
        left = (start + timedelta(seconds=rules.deadline_seconds) - now).total_seconds()
        next_due = left if next_due is None else min(next_due, left)
    return Decision(
        start=tuple(creates),
        next_due=next_due,
        kept=frozenset(outcome.deferred | outcome.waiting),
        **common,  # type: ignore[arg-type]
    )


__all__ = [
    "Decision",
    "Outcome",
    "Recorded",
    "Retry",
    "Rules",
    "Verdict",
    "judge",
    "latest_spans",
    "plan",
    "verdict_of",
]
