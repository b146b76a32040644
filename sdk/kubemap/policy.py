"""The failure policy shared by the local backend and the operator, so both decide alike.

Pure functions only: given counts, say whether a task may go on, has succeeded or failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kubemap.contract import EXIT_INFRA_ERROR, EXIT_OK, EXIT_USAGE_ERROR, EXIT_USER_ERROR

# An infrastructure failure (store unreachable, node lost) is not the user's fault, so it
# does not spend the index's retries; this bound only stops an endless loop on a broken store.
INFRA_RETRY_LIMIT = 5
BACKOFF_BASE_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 360.0


@dataclass(frozen=True)
class FailureBudget:
    """How many indices may fail for good before the whole task is failed."""

    total: int
    allowed: int

    @classmethod
    def of(
        cls, total: int, *, min_success_ratio: float = 1.0, max_failed_indexes: int | None = None
    ) -> FailureBudget:
        # ratio 0.95 over 10 items needs 10 * 0.95 = 9.5 -> 10 successes: round successes up.
        needed = math.ceil(total * min_success_ratio - 1e-9)
        allowed = max(0, total - needed)
        if max_failed_indexes is not None:
            allowed = min(allowed, max_failed_indexes)
        return cls(total=total, allowed=allowed)

    def exceeded(self, failed: int) -> bool:
        return failed > self.allowed


def retry_delay(failures_so_far: int) -> float:
    """Exponential backoff before the next attempt of an index: 10 s, 20 s, 40 s ... 6 min."""
    if failures_so_far <= 0:
        return 0.0
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (failures_so_far - 1)))


def classify_exit(exit_code: int | None) -> str:
    """'ok', 'user', 'infra' or 'usage' from a worker's exit code (None: killed, lost)."""
    if exit_code == EXIT_OK:
        return "ok"
    if exit_code == EXIT_USER_ERROR:
        return "user"
    if exit_code == EXIT_USAGE_ERROR:
        return "usage"
    if exit_code == EXIT_INFRA_ERROR or exit_code is None:
        return "infra"
    # Any other code: a crash the worker could not report (OOM kill 137, segfault...). In
    # container mode it is simply the user's command failing.
    return "user"
