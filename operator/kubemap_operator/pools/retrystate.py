"""Per-index user failure counts of a pool task, kept in its status so a restart grants no
extra retry (pure, no I/O).

In pod mode the counts live on the pods (annotations), which outlive the operator. A pool
task's attempts are leases in the dispatcher's memory, so the dispatcher writes the counts
of indices still in play to `status.poolFailures` ("1:3-5,9;2:7": indices 3-5 and 9 failed
once, 7 twice) with its rate-limited status flush, and a restarted dispatcher turns them
back into failed attempts for plan(): the same failures + 1 > retries test then gives the
same answer as before the restart. Counts recorded in the flush interval before a crash
(at most FLUSH_SECONDS) can be lost; an index is never given fewer retries than asked.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from kubemap.contract import EXIT_USER_ERROR
from kubemap.core.ranges import IndexRanges, RangesSyntaxError
from kubemap.resources.maptask import MapTaskStatus

from kubemap_operator.pools.leases import Lease, Leases
from kubemap_operator.tasks.observe import PodState, WorkerReport

MAX_INTERVALS = 1000  # bounded like failedIndexes; past it the most-failed counts are kept
MAX_CHARS = 16000  # the CRD field's maxLength is 16384


def counts_in_play(leases: Leases, done: IndexRanges) -> dict[int, IndexRanges]:
    """failures -> indices, for every index a lease covers that is not recorded yet.

    Interval arithmetic only: a lease of 100,000 tiny items costs no per-index loop, and a
    task with no failure (the common case) costs one pass over its few leases."""
    seen: list[tuple[int, IndexRanges]] = []
    for lease in leases.by_name.values():
        failed_here = lease.state is PodState.FAILED
        if lease.failures == 0 and not failed_here:
            continue
        span = IndexRanges.span(lease.start, lease.start + lease.count) - done
        if not failed_here:
            seen.append((lease.failures, span))  # running, or done and unrecorded
            continue
        report = lease.report
        if report is not None:
            user = span & report.failed
        elif lease.exit_code == EXIT_USER_ERROR:
            user = span
        else:
            user = IndexRanges()
        seen.append((lease.failures + 1, user))  # this lease's own failure counts too
        seen.append((lease.failures, span - user))
    out: dict[int, IndexRanges] = {}
    assigned = IndexRanges()
    for n, ranges in sorted(seen, key=lambda pair: -pair[0]):  # an index keeps its highest
        fresh = ranges - assigned
        if n > 0 and fresh:
            out[n] = out.get(n, IndexRanges()) | fresh
            assigned = assigned | fresh
    return out


def encode(counts: dict[int, IndexRanges]) -> str | None:
    parts, intervals = [], 0
    for n in sorted(counts, reverse=True):  # the most-failed first: those matter most
        ranges = counts[n]
        intervals += len(ranges.intervals)
        if intervals > MAX_INTERVALS:
            break
        parts.append(f"{n}:{ranges}")
    text = ";".join(parts)
    while len(text) > MAX_CHARS and parts:
        parts.pop()
        text = ";".join(parts)
    return text or None


def decode(text: str | None) -> dict[int, IndexRanges]:
    """The counts back; a damaged field is read as far as it parses (never an error)."""
    out: dict[int, IndexRanges] = {}
    for part in (text or "").split(";"):
        n, _, ranges = part.partition(":")
        try:
            count = int(n)
            parsed = IndexRanges.parse(ranges)
        except (ValueError, RangesSyntaxError):
            continue
        if count > 0 and parsed:
            out[count] = out.get(count, IndexRanges()) | parsed
    return out


def recovered_leases(
    counts: dict[int, IndexRanges], done: IndexRanges, attempt_base: int, now: datetime
) -> list[Lease]:
    """Failed attempts that carry the counts into plan(): one per interval, its indices
    reported failed, so plan() decides retry or final failure exactly as before."""
    out: list[Lease] = []
    for n, ranges in sorted(counts.items()):
        for lo, hi in (ranges - done).intervals:
            lease = Lease(
                start=lo,
                count=hi - lo,
                attempt=attempt_base + n,
                failures=n - 1,
                infra_failures=0,
                worker="(before the operator restarted)",
                expires=now - timedelta(seconds=1),
                leased_at=now,
            )
            lease.finish("user", WorkerReport(IndexRanges(), IndexRanges.span(lo, hi)), now)
            out.append(lease)
    return out


def _recorded(status: MapTaskStatus) -> IndexRanges:
    return IndexRanges.parse(status.succeeded_indexes) | IndexRanges.parse(status.failed_indexes)


def with_counts(status: MapTaskStatus, leases: Leases) -> MapTaskStatus:
    """The status with the user failure counts of the indices still in play."""
    in_play = not status.phase.finished and any(
        lease.failures or lease.state is PodState.FAILED for lease in leases.by_name.values()
    )
    text = encode(counts_in_play(leases, _recorded(status))) if in_play else None
    if text == status.pool_failures:
        return status
    return status.model_copy(update={"pool_failures": text})


def restore_counts(status: MapTaskStatus, leases: Leases, now: datetime) -> None:
    """After a restart: the counts in the status become failed attempts plan() reads."""
    counts = decode(status.pool_failures)
    if not counts or status.phase.finished:
        return
    for lease in recovered_leases(counts, _recorded(status), status.attempt_base, now):
        leases.by_name[lease.name] = lease
