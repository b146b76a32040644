"""How a task is cut into slices, on every backend: pure logic, no I/O.

Pods: when the user gives no `items_per_pod`, auto_items_per_pod sizes by count. One pod
per item makes pod start-up (seconds) the cost of every item (often milliseconds), and the
SDK cannot know how long an item takes: about WAVES pods per parallelism slot, so each slot
starts only a few pods in the whole run while a slot that drew slow items still leaves the
others work to steal; never fewer pods than parallelism allows, never more than
MAX_ITEMS_PER_POD in one pod (its results are one object held in memory).

Warm pools: each lease takes guided_chunk of what remains (OpenMP's guided schedule:
remaining / (GUIDED_K x workers)), never below MIN_CHUNK_SECONDS of measured work.

Local: with `items_per_pod` given, every slice has exactly that many indices, as pods would
on a cluster. Otherwise ChunkPlanner adapts, so that neither tiny nor slow items suffer:
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

# -- pods --
WAVES = 2
MAX_ITEMS_PER_POD = 10_000


def auto_items_per_pod(total: int, parallelism: int) -> int:
    """itemsPerPod for `total` items at `parallelism` pods at once."""
    if total <= parallelism or parallelism < 1:
        return 1
    return max(1, min(MAX_ITEMS_PER_POD, math.ceil(total / (parallelism * WAVES))))


# -- warm pool leases --
GUIDED_K = 1  # OpenMP guided: chunk = remaining / (k x workers)
# A chunk costs a few round trips (lease, two ranged GETs, a result PUT, the report: tens of
# ms); the floor keeps each chunk at least this much work, so the tail stays cheap.
MIN_CHUNK_SECONDS = 0.25


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


# -- local slices --
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
