"""How the local backend cuts a task into slices: pure logic, no I/O.

With `items_per_pod` given, every slice has exactly that many indices, as pods would on
a cluster. Otherwise sizes adapt, so that neither tiny nor slow items suffer:
  - guided self-scheduling: a slice takes 1/(2W) of what remains (W workers share the
    slices), so early slices are big (little overhead) and the last ones small (workers
    finish together);
  - a floor of total/(16W) keeps the number of slices near 6 per worker for tiny items;
  - a ramp and a time cap: the first slices are a single index, each later one at most
    4x the largest finished so far, and never more than ~TARGET_SECONDS of work at the
    measured rate, so slow items still give frequent progress and lose little on a
    timeout or cancel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TARGET_SECONDS = 1.0  # aim for slices of about this much work once the rate is known
RAMP_FACTOR = 4
FLOOR_SLICES_PER_WORKER = 16
GUIDED_DIVISOR = 2


@dataclass
class ChunkPlanner:
    """Hands out fresh slices [start, start+count) in order until `total` is covered, to be
    shared by `workers` workers (the guided divisor; the run's parallelism bounds it)."""

    total: int
    workers: int
    items_per_pod: int | None = None
    target_seconds: float = TARGET_SECONDS
    next_start: int = 0
    _largest_done: int = 0
    _rate: float | None = None  # items per second per worker, from finished slices

    def __post_init__(self) -> None:
        if self.total < 0:
            raise ValueError("total must be >= 0")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        self._floor = max(1, math.ceil(self.total / (FLOOR_SLICES_PER_WORKER * self.workers)))

    @property
    def exhausted(self) -> bool:
        return self.next_start >= self.total

    @property
    def remaining(self) -> int:
        return self.total - self.next_start

    def size_for_next(self) -> int:
        """How many indices the next slice gets (0 once exhausted)."""
        remaining = self.remaining
        if remaining <= 0:
            return 0
        if self.items_per_pod is not None:
            return min(self.items_per_pod, remaining)
        size = max(math.ceil(remaining / (GUIDED_DIVISOR * self.workers)), self._floor)
        ramp = max(1, self._largest_done * RAMP_FACTOR)
        size = min(size, ramp)
        if self._rate is not None:
            size = min(size, max(1, int(self._rate * self.target_seconds)))
        return max(1, min(size, remaining))

    def next(self) -> tuple[int, int] | None:
        """The next fresh slice as (start, count), or None when every index was handed out."""
        count = self.size_for_next()
        if count == 0:
            return None
        start = self.next_start
        self.next_start += count
        return start, count

    def observe(self, count: int, seconds: float) -> None:
        """A worker finished `count` indices in `seconds` (wall time, overhead included)."""
        if count <= 0:
            return
        self._largest_done = max(self._largest_done, count)
        rate = count / max(seconds, 1e-6)
        # The latest, largest slices measure best: per-slice overhead fades as slices grow.
        self._rate = rate if self._rate is None else max(rate, 0.5 * self._rate + 0.5 * rate)


def worker_count(total: int, parallelism: int, items_per_pod: int | None = None) -> int:
    """Processes to start: never more than there are slices to run at once."""
    slices = total if items_per_pod is None else math.ceil(total / items_per_pod)
    return max(0, min(parallelism, slices))
