"""Speculative copies for stragglers: when to run a backup copy of a slice (pure, no I/O).

A map is as slow as its slowest slice: one slow node turns a ten-minute map into an hour.
MapReduce's answer, and ours: once no slice waits for a worker (the work left is all
running), a slice that has run `factor` times longer than the task's measured time for that
many items gets a backup copy on an idle worker (pool) or in a second pod. The first copy to
finish commits (results are write-once: the other copy's write is refused and changes
nothing), the other is stopped. A user function's side effects may therefore happen twice
for a speculated item; `speculation=False` turns it off per task.

The backups of a task never cover more than `budget` x total items; `min_seconds` keeps
short slices from being copied on noise.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

DEFAULT_FACTOR = 2.0
DEFAULT_MIN_SECONDS = 5.0
DEFAULT_BUDGET = 0.1
PACE_SAMPLES = 32  # per-item times of the slices finished last (the median of these)


@dataclass(frozen=True)
class SpeculationRule:
    """When a slice is a straggler, and how much extra work backups may add."""

    enabled: bool = True
    factor: float = DEFAULT_FACTOR
    min_seconds: float = DEFAULT_MIN_SECONDS
    budget: float = DEFAULT_BUDGET  # share of the task's items that backups may cover

    def budget_items(self, total: int) -> int:
        return math.floor(self.budget * total + 1e-9) if self.enabled else 0

    def overdue_after(self, items: int, seconds_per_item: float | None) -> float | None:
        """Seconds after which a slice of `items` is a straggler; None while nothing is
        measured (no slice of the task has finished yet) or when speculation is off."""
        if not self.enabled or seconds_per_item is None or items <= 0:
            return None
        return max(self.min_seconds, self.factor * seconds_per_item * items)

    def is_straggler(self, running: float, items: int, seconds_per_item: float | None) -> bool:
        after = self.overdue_after(items, seconds_per_item)
        return after is not None and running > after


@dataclass
class Pace:
    """The task's measured seconds per item: the median over the last slices that finished
    (a median, so the straggler's own slow slices do not make slowness look normal)."""

    samples: deque[float] = field(default_factory=lambda: deque(maxlen=PACE_SAMPLES))

    def add(self, seconds: float, items: int) -> None:
        if items > 0 and seconds >= 0:
            self.samples.append(seconds / items)

    @property
    def seconds_per_item(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


@dataclass
class SpeculationTally:
    """What speculation did in one task: backup copies started, backups that finished
    first (won), and losing copies that ran on and reported after the race was decided
    (wasted: their report changed nothing). `items` is what the backups covered (bounded
    by the rule's budget)."""

    speculated: int = 0
    won: int = 0
    wasted: int = 0
    items: int = 0

    def room(self, rule: SpeculationRule, total: int, items: int) -> bool:
        """Whether a backup of `items` more stays within the budget."""
        return self.items + items <= rule.budget_items(total)
