"""Speculative copies on a warm pool: a straggling lease gets one backup on an idle worker
once no chunk waits; the first ok report wins, the other copy is taken back (its heartbeat
says lost, its late report is refused) and each index is recorded once. Counted: leases
granted, reports accepted, the status's speculated/won/wasted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from kubemap.core.ranges import IndexRanges
from kubemap.core.speculation import Pace, SpeculationRule
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Mode, Speculation, StoreRef
from kubemap_operator.pools.dispatch import Dispatcher, Grant
from kubemap_operator.pools.leases import LeaseState
from kubemap_operator.tasks.observe import WorkerReport
from kubemap_operator.tasks.plantypes import Limits

POOL, KEY, URL = ("ns", "p"), ("ns", "t"), "s3://b/p/t"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def spec(total: int, **kw: Any) -> MapTaskSpec:
    return MapTaskSpec(
        mode=Mode.FUNCTION, count=total, store=StoreRef(url="s3://b/p"), pool="p", **kw
    )


def lease(d: Dispatcher, worker: str) -> Grant | None:
    return asyncio.run(d.lease(POOL, worker, "3.11", 0))


def ok(d: Dispatcher, g: Grant) -> bool:
    span = IndexRanges.span(g.start, g.start + g.count)
    return d.report(POOL, g.lease_id, "ok", WorkerReport(span, IndexRanges()))


def started(total: int, workers: int, **kw: Any) -> tuple[Dispatcher, Clock, list[Grant]]:
    """A task whose chunks are all leased, one per worker (w0 is the straggler)."""
    clock = Clock()
    d = Dispatcher(lease_seconds=1e6, clock=clock, limits=Limits(backoff_base_seconds=0))
    names = [f"w{i}" for i in range(workers)]
    for w in names:
        d.seen(POOL, w, "3.11")
    kw.setdefault("parallelism", workers)
    d.sync(KEY, "u", spec(total, **kw), MapTaskStatus(), URL, "3.11", 1)
    grants = []
    for w in names:
        g = lease(d, w)
        assert g is not None
        grants.append(g)
    return d, clock, grants


def run_rest(d: Dispatcher, clock: Clock, fast: Grant) -> Grant | None:
    """w1 runs every chunk left at 0.1 s per item while w0 sits on its first one; then, a
    minute later, w1 asks once more: the backup it gets, if any."""
    while True:
        clock.now += timedelta(seconds=0.1 * fast.count)
        assert ok(d, fast)
        nxt = lease(d, "w1")
        if nxt is None:
            clock.now += timedelta(seconds=60)
            return lease(d, "w1")
        if nxt.lease_id.endswith("s"):
            return nxt
        fast = nxt


EAGER = Speculation(min_seconds=0.0, budget=1.0)


def test_a_straggler_gets_one_backup_which_wins_and_the_original_is_taken_back() -> None:
    d, clock, (slow, fast) = started(100, 2, speculation=Speculation(min_seconds=1.0, budget=0.5))
    task = d.tasks[KEY]
    backup = run_rest(d, clock, fast)
    assert backup is not None and not task.waiting()
    assert (backup.start, backup.count, backup.attempt) == (slow.start, slow.count, slow.attempt)
    # far later than k x its expected time: asked again, no second backup of the same slice
    assert lease(d, "w2") is None
    clock.now += timedelta(seconds=0.1 * backup.count)
    assert ok(d, backup)  # the backup finishes first: it wins
    assert d.heartbeat(POOL, "w0", [slow.lease_id]) == [slow.lease_id]  # w0 stops its function
    assert not ok(d, slow), "the loser's late report was accepted"
    status = task.status
    assert status.phase.value == "Succeeded" and status.succeeded == 100
    assert status.succeeded_indexes == "0-99"
    assert (status.speculated, status.speculation_won, status.speculation_wasted) == (1, 1, 1)


def test_the_original_can_win_the_race_and_its_backup_is_taken_back() -> None:
    d, clock, (slow, fast) = started(40, 2, speculation=EAGER)
    backup = run_rest(d, clock, fast)
    assert backup is not None
    assert ok(d, slow)
    backup_lease = d.tasks[KEY].leases.get(backup.lease_id.partition("/")[2])
    assert backup_lease is None
    assert not ok(d, backup)
    status = d.tasks[KEY].status
    assert status.succeeded == 40 and status.succeeded_indexes == "0-39"
    assert (status.speculated, status.speculation_won, status.speculation_wasted) == (1, 0, 1)


def test_no_backup_when_speculation_is_off() -> None:
    d, clock, (_, fast) = started(40, 2, speculation=Speculation(enabled=False))
    assert run_rest(d, clock, fast) is None
    clock.now += timedelta(hours=1)
    assert lease(d, "w1") is None and lease(d, "w2") is None
    assert d.tasks[KEY].speculation.speculated == 0 and len(d.tasks[KEY].leases) == 1


def test_no_backup_while_a_chunk_waits_or_before_its_time() -> None:
    rule = Speculation(min_seconds=30.0, budget=1.0)
    d, clock, (slow, fast) = started(1000, 2, speculation=rule, parallelism=10)
    clock.now += timedelta(seconds=1)
    assert ok(d, fast)  # measured: 1 s for fast.count items
    clock.now += timedelta(hours=1)
    task = d.tasks[KEY]
    while task.fresh.ranges:  # w0's lease is an hour old, but chunks wait: no backup
        more = lease(d, "w2")
        assert more is not None and not more.lease_id.endswith("s")
        if task.fresh.ranges:
            assert ok(d, more)
    backup = lease(d, "w3")
    assert backup is not None and backup.lease_id == f"t/{slow.start}-0s"
    assert lease(d, "w4") is None  # w2's lease has run no time at all


def test_backups_stay_within_the_budget() -> None:
    """15 % of 100 items: of the stragglers' chunks (25, 14 and 11 items) only one fits."""
    rule = Speculation(min_seconds=0.0, budget=0.15)
    d, clock, grants = started(100, 4, speculation=rule)
    clock.now += timedelta(seconds=1)
    assert ok(d, grants[1])
    task = d.tasks[KEY]
    while task.fresh.ranges:  # w1 runs the rest in no time; w0, w2, w3 straggle
        more = lease(d, "w1")
        assert more is not None and ok(d, more)
    clock.now += timedelta(hours=1)
    made = [g for g in (lease(d, w) for w in ("w1", "w5", "w6", "w7")) if g is not None]
    tally = task.speculation
    assert 0 < tally.items <= 15 and len(made) == 1 and sum(g.count for g in made) == tally.items
    assert tally.speculated == len(made)


def test_a_copy_that_fails_while_its_twin_runs_is_set_aside() -> None:
    d, clock, (slow, fast) = started(40, 2, speculation=EAGER)
    backup = run_rest(d, clock, fast)
    assert backup is not None
    span = IndexRanges.span(backup.start, backup.start + backup.count)
    assert d.report(POOL, backup.lease_id, "user", WorkerReport(IndexRanges(), span))
    task = d.tasks[KEY]
    held = task.leases[slow.lease_id.partition("/")[2]]
    assert held.state.live and held.twin is None and not task.failed
    assert ok(d, slow)
    assert task.status.succeeded == 40 and task.status.failed == 0
    assert (task.status.speculated, task.status.speculation_wasted) == (1, 1)
    assert held.state is LeaseState.REPORTED


def test_the_rule_and_the_pace() -> None:
    rule = SpeculationRule(factor=2.0, min_seconds=5.0)
    assert rule.overdue_after(10, None) is None  # nothing measured yet
    assert rule.overdue_after(10, 0.01) == 5.0  # the floor: 0.2 s expected is noise
    assert rule.overdue_after(100, 0.1) == 20.0
    assert not rule.is_straggler(20.0, 100, 0.1) and rule.is_straggler(20.1, 100, 0.1)
    assert SpeculationRule(enabled=False).overdue_after(100, 0.1) is None
    assert SpeculationRule(budget=0.1).budget_items(2000) == 200
    pace = Pace()
    for seconds in (1.0, 1.1, 0.9, 30.0):  # one slow slice does not move the median far
        pace.add(seconds, 10)
    assert pace.seconds_per_item is not None and pace.seconds_per_item < 0.11


def test_no_chunk_is_larger_than_the_backup_budget() -> None:
    """Guided chunks start at 1/workers of the task (250 of 2,000 on 8 workers), more than a
    10 % budget: such a straggler could never get a backup. With speculation they are cut to
    a quarter of the budget (four stragglers can be copied, each sooner)."""
    *_, first_on = started(2000, 8)
    *_, first_off = started(2000, 8, speculation=Speculation(enabled=False))
    assert max(g.count for g in first_on) == 50
    assert max(g.count for g in first_off) == 250
