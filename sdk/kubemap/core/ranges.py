"""Sets of indices as compressed interval strings ("0-3,7"), as Indexed Jobs keep them.

A task's state that grows with its size lives here or in object storage, never as
lists in the MapTask object. `IndexRanges` is immutable; operations return new sets.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


class RangesSyntaxError(ValueError):
    """A compressed range string could not be parsed."""


@dataclass(frozen=True, slots=True)
class IndexRanges:
    """A set of non-negative integers as sorted, disjoint, non-adjacent half-open intervals."""

    intervals: tuple[tuple[int, int], ...] = ()

    # -- construction ------------------------------------------------------------
    @classmethod
    def parse(cls, text: str | None) -> IndexRanges:
        """Parse "0-3,7" (inclusive bounds). Empty or None is the empty set."""
        if not text:
            return cls()
        spans: list[tuple[int, int]] = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part:
                    lo_text, hi_text = part.split("-", 1)
                    lo, hi = int(lo_text), int(hi_text)
                else:
                    lo = hi = int(part)
            except ValueError:
                raise RangesSyntaxError(
                    f"bad index range {part!r} in {text!r}: expected N or N-M, e.g. '0-3,7'"
                ) from None
            if lo < 0 or hi < lo:
                raise RangesSyntaxError(
                    f"bad index range {part!r} in {text!r}: need 0 <= start <= end"
                )
            spans.append((lo, hi + 1))
        return cls.from_spans(spans)

    @classmethod
    def from_spans(cls, spans: Iterable[tuple[int, int]]) -> IndexRanges:
        """From half-open (start, stop) spans in any order, overlapping or not."""
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(s for s in spans if s[1] > s[0]):
            if merged and lo <= merged[-1][1]:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return cls(tuple(merged))

    @classmethod
    def of(cls, indices: Iterable[int]) -> IndexRanges:
        # One pass when the indices come sorted (the common case: a slice's successes);
        # fall back to the general merge only when they do not.
        spans: list[tuple[int, int]] = []
        lo = hi = -1
        for i in indices:
            if i == hi:
                hi += 1
            elif i > hi:
                if hi > lo:
                    spans.append((lo, hi))
                lo, hi = i, i + 1
            else:
                rest = [(i, i + 1)]
                rest.extend((j, j + 1) for j in indices)
                return cls.from_spans([*spans, (lo, hi), *rest])
        if hi > lo:
            spans.append((lo, hi))
        return cls(tuple(spans))

    @classmethod
    def span(cls, start: int, stop: int) -> IndexRanges:
        return cls(((start, stop),)) if stop > start else cls()

    # -- queries -------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(hi - lo for lo, hi in self.intervals)

    def __bool__(self) -> bool:
        return bool(self.intervals)

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        pos = bisect.bisect_right(self.intervals, (index, float("inf"))) - 1
        return pos >= 0 and self.intervals[pos][0] <= index < self.intervals[pos][1]

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self.intervals:
            yield from range(lo, hi)

    def __str__(self) -> str:
        return ",".join(str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in self.intervals)

    # -- algebra -------------------------------------------------------------------
    def union(self, other: IndexRanges) -> IndexRanges:
        return IndexRanges.from_spans(self.intervals + other.intervals)

    __or__ = union

    def difference(self, other: IndexRanges) -> IndexRanges:
        out: list[tuple[int, int]] = []
        j = 0
        theirs = other.intervals
        for lo, hi in self.intervals:
            cur = lo
            while j < len(theirs) and theirs[j][1] <= cur:
                j += 1
            k = j
            while k < len(theirs) and theirs[k][0] < hi:
                t_lo, t_hi = theirs[k]
                if t_lo > cur:
                    out.append((cur, t_lo))
                cur = max(cur, t_hi)
                if cur >= hi:
                    break
                k += 1
            if cur < hi:
                out.append((cur, hi))
        return IndexRanges(tuple(out))

    __sub__ = difference

    def intersection(self, other: IndexRanges) -> IndexRanges:
        out: list[tuple[int, int]] = []
        i = j = 0
        a, b = self.intervals, other.intervals
        while i < len(a) and j < len(b):
            lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
            if lo < hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return IndexRanges(tuple(out))

    __and__ = intersection

    def first(self, n: int) -> list[int]:
        """The n smallest members, without materialising the set."""
        out: list[int] = []
        for lo, hi in self.intervals:
            for i in range(lo, hi):
                if len(out) >= n:
                    return out
                out.append(i)
        return out


def describe(ranges: IndexRanges, limit: int = 80) -> str:
    """Ranges for a human message, shortened: '0-3,7,12 (+40 more)'."""
    text = str(ranges)
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(",", 1)[0]
    shown = IndexRanges.parse(cut)
    return f"{cut} (+{len(ranges) - len(shown)} more)"


def within(ranges: IndexRanges, lo: int, hi: int) -> IndexRanges:
    """ranges & [lo, hi) in O(log n): planning stays fast with thousands of attempts."""
    spans = ranges.intervals
    first = max(0, bisect.bisect_right(spans, (lo, lo)) - 1)
    last = bisect.bisect_left(spans, (hi, hi))
    return IndexRanges(spans[first:last]) & IndexRanges.span(lo, hi)
