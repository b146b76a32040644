"""How many items each pod of an SDK function-mode task runs, when the user did not say.

One pod per item makes pod start-up (seconds) the cost of every item (often milliseconds):
100,000 tiny items would be 100,000 pods. The SDK cannot know how long an item takes, so it
sizes by count: about WAVES pods per parallelism slot, so each slot starts only a few pods
in the whole run (start-up is paid WAVES times per slot, not once per item) while a slot
that drew slow items still leaves the others work to steal. Never fewer pods than
parallelism allows (each slot gets work), never more than MAX_ITEMS_PER_POD in one pod (its
results are one object held in memory). `items_per_pod=1` keeps one pod per index.
"""

from __future__ import annotations

import math

WAVES = 2
MAX_ITEMS_PER_POD = 10_000


def auto_items_per_pod(total: int, parallelism: int) -> int:
    """itemsPerPod for `total` items at `parallelism` pods at once."""
    if total <= parallelism or parallelism < 1:
        return 1
    return max(1, min(MAX_ITEMS_PER_POD, math.ceil(total / (parallelism * WAVES))))
