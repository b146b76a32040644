"""Which live lease of a pool task gets a backup copy, if any (pure, no I/O).

The rule is the core's (kubemap.core.speculation): only once nothing waits for a worker (no
fresh chunk, no retry), only for a lease that never had a backup (one per lease), held by another worker than the
one asking, running longer than its expected time allows, and within the task's budget of
backup items. Of those, the one furthest past its expected time goes first.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from kubemap.core.speculation import SpeculationRule, SpeculationTally

from kubemap_operator.pools.leases import Lease


def pick_straggler(
    leases: Iterable[Lease],
    *,
    rule: SpeculationRule,
    seconds_per_item: float | None,
    tally: SpeculationTally,
    total: int,
    worker: str,
    now: datetime,
) -> Lease | None:
    best: tuple[float, Lease] | None = None
    for lease in leases:
        if lease.backup or lease.backed_up or lease.worker == worker:
            continue
        after = rule.overdue_after(lease.count, seconds_per_item)
        running = (now - lease.leased_at).total_seconds()
        if after is None or running <= after or not tally.room(rule, total, lease.count):
            continue
        lateness = running / after if after > 0 else running
        if best is None or lateness > best[0]:
            best = (lateness, lease)
    return best[1] if best is not None else None
