"""Per-index user failure counts of a pool task, kept in its status so a restart grants no
extra retry (pure, no I/O).

In pod mode the counts live on the pods (annotations), which outlive the operator. A pool
task's attempts are leases in the dispatcher's memory, so the dispatcher writes the counts
of indices still in play to `status.poolFailures` ("1:3-5,9;2:7": indices 3-5 and 9 failed
once, 7 twice) with its rate-limited status flush, and a restarted dispatcher turns them
back into retries with those counts: the same failures + 1 > retries test then gives the
same answer as before the restart. Counts recorded in the flush interval before a crash
(at most FLUSH_SECONDS) can be lost; an index is never given fewer retries than asked.
"""

from __future__ import annotations

from collections.abc import Iterable

from kubemap.core.ranges import IndexRanges, RangesSyntaxError
from kubemap.resources.maptask import MapTaskStatus

from kubemap_operator.pools.leases import Pending

MAX_INTERVALS = 1000  # bounded like failedIndexes; past it the most-failed counts are kept
MAX_CHARS = 16000  # the CRD field's maxLength is 16384


def counts_in_play(
    in_play: Iterable[tuple[int, IndexRanges]], done: IndexRanges
) -> dict[int, IndexRanges]:
    """failures -> indices, from (failures so far, indices) of every retry waiting and every
    lease running; an index keeps its highest count, recorded indices are left out.

    Interval arithmetic only: a lease of 100,000 tiny items costs no per-index loop."""
    out: dict[int, IndexRanges] = {}
    assigned = done
    for n, ranges in sorted(in_play, key=lambda pair: -pair[0]):
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


def recorded(status: MapTaskStatus) -> IndexRanges:
    return IndexRanges.parse(status.succeeded_indexes) | IndexRanges.parse(status.failed_indexes)


def restored(status: MapTaskStatus, attempt_base: int) -> list[Pending]:
    """After a restart: the counts in the status become the retries they were (due now)."""
    if status.phase.finished:
        return []
    done = recorded(status)
    return [
        Pending(ranges - done, attempt=attempt_base + n + 1, failures=n)
        for n, ranges in sorted(decode(status.pool_failures).items())
        if ranges - done
    ]
