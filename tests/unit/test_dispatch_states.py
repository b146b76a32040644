"""The dispatcher as a state machine: lease states, O(1) work per event, and invariants that
hold over random event sequences (lease requests, heartbeats, reports, the clock running
out, status flushes, a cancel), driven by hypothesis.

Invariants, after every event:
* every index of a running task is in exactly one place: succeeded, failed for good, fresh,
  one retry, or held by one live lease; a finished task's indices are succeeded, failed or
  not run; a held index may also be in one backup copy (speculation), which races the lease
  that holds it: same slice, live, each the other's twin;
* a live lease is offered or leased; every other lease ever granted is final (reported,
  expired or lost), and a lease id is never granted twice;
* a report is counted once: a second report of a lease is refused (410), a loser's late
  report too, and the recorded successes are exactly what judged reports said succeeded
  (a copy's failure while its twin runs is set aside, not judged);
* backups stay within the budget, and wasted copies never outnumber the backups started.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubemap.core.ranges import IndexRanges
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Mode, Speculation, StoreRef
from kubemap_operator.pools import dispatch
from kubemap_operator.pools.dispatch import Dispatcher, Grant
from kubemap_operator.pools.leases import LeaseState
from kubemap_operator.tasks import planner
from kubemap_operator.tasks.observe import WorkerReport
from kubemap_operator.tasks.plantypes import Limits

POOL, KEY, URL = ("ns", "p"), ("ns", "t"), "s3://b/p/t"
WORKERS = ("w0", "w1", "w2")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def spec(total: int, **kw: Any) -> MapTaskSpec:
    return MapTaskSpec(
        mode=Mode.FUNCTION, count=total, store=StoreRef(url="s3://b/p"), pool="p", **kw
    )


def grant(d: Dispatcher, worker: str = "w0") -> Grant | None:
    return asyncio.run(d.lease(POOL, worker, "3.11", 0))


def span_of(g: Grant) -> IndexRanges:
    return IndexRanges.span(g.start, g.start + g.count)


class Counting:
    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        return self.inner(*args, **kw)


def test_no_planner_run_per_event_and_one_judgement_per_finished_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: every lease request re-ran the pod planner (kubemap.core.plan.plan over every
    lease of the task, building up to `parallelism` slice requests to use the first), and
    every report and status sync ran it again. Now a lease request runs none, and a finished
    lease is judged once (kubemap.core.plan.judge on that one attempt)."""
    planned = Counting(planner.core_plan)
    monkeypatch.setattr(planner, "core_plan", planned)
    judged = Counting(getattr(dispatch, "judge", None))
    monkeypatch.setattr(dispatch, "judge", judged, raising=False)
    clock = Clock()
    d = Dispatcher(clock=clock, limits=Limits(backoff_base_seconds=0))
    for w in WORKERS:
        d.seen(POOL, w, "3.11")
    d.sync(KEY, "u", spec(1000, parallelism=10_000), MapTaskStatus(), URL, "3.11", 1)
    leases = reports = 0
    while not d.tasks[KEY].status.phase.finished:
        got = grant(d, WORKERS[leases % 3])
        assert got is not None
        leases += 1
        assert d.report(POOL, got.lease_id, "ok", WorkerReport(span_of(got), IndexRanges()))
        reports += 1
    assert planned.calls == 0, f"{planned.calls} planner runs for {leases} leases"
    assert judged.calls == reports


@pytest.mark.parametrize("backoff", [0.0, 1.0])
def test_an_expired_lease_is_expired_once_and_its_late_report_is_refused(backoff: float) -> None:
    clock = Clock()
    d = Dispatcher(lease_seconds=5, clock=clock, limits=Limits(backoff_base_seconds=backoff))
    d.sync(KEY, "u", spec(4), MapTaskStatus(), URL, "3.11", 1)
    first = grant(d)
    assert first is not None
    lease = d.tasks[KEY].leases["0-0"]
    assert d.heartbeat(POOL, "w0", [first.lease_id]) == [] and lease.state is LeaseState.LEASED
    clock.now += timedelta(seconds=6)
    assert d.heartbeat(POOL, "w0", [first.lease_id]) == [first.lease_id]
    assert lease.state is LeaseState.EXPIRED and not d.tasks[KEY].leases
    assert not d.report(POOL, first.lease_id, "ok", WorkerReport(span_of(first), IndexRanges()))
    again = grant(d, "w1")  # a lost lease is retried at once, whatever the backoff
    assert again is not None and (again.start, again.attempt) == (0, 1)
    assert d.tasks[KEY].leases["0-1"].infra_failures == 1


EVENT = st.tuples(
    st.sampled_from(["lease", "lease", "heartbeat", "report", "report", "tick", "sync"]),
    st.integers(0, 2),  # which worker / which lease
    st.sampled_from(["ok", "user", "infra", "partial"]),
    st.integers(0, 7),  # seconds for a tick
)
EVENTS = st.lists(EVENT, max_size=60)
RACING = Speculation(factor=1.0, min_seconds=0.0, budget=1.0)  # backups as soon as allowed


@settings(max_examples=150, deadline=None)
@given(
    events=EVENTS,
    total=st.integers(1, 40),
    retries=st.integers(0, 2),
    ratio=st.sampled_from([1.0, 0.5, 0.0]),
    backoff=st.sampled_from([0.0, 2.0]),
    cancel_at=st.one_of(st.none(), st.integers(0, 60)),
    speculation=st.sampled_from(
        [
            None,
            Speculation(enabled=False),
            Speculation(factor=1.0, min_seconds=0.0, budget=0.5),
            Speculation(factor=1.0, min_seconds=0.0, budget=1.0),
        ]
    ),
)
def test_invariants_hold_over_random_event_sequences(
    events: list[tuple[str, int, str, int]],
    total: int,
    retries: int,
    ratio: float,
    backoff: float,
    cancel_at: int | None,
    speculation: Speculation | None,
) -> None:
    run_events(events, total, retries, ratio, backoff, cancel_at, speculation)


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(EVENT, min_size=30, max_size=80),
    total=st.integers(4, 40),
    retries=st.integers(0, 1),
    ratio=st.sampled_from([1.0, 0.0]),
)
def test_invariants_hold_while_backups_race(
    events: list[tuple[str, int, str, int]], total: int, retries: int, ratio: float
) -> None:
    """Long sequences with speculation as eager as it gets: many backups, races won by
    either copy, copies failing or expiring while their twin runs."""
    run_events(events, total, retries, ratio, 0.0, None, RACING, recent=True)


def run_events(
    events: list[tuple[str, int, str, int]],
    total: int,
    retries: int,
    ratio: float,
    backoff: float,
    cancel_at: int | None,
    speculation: Speculation | None,
    *,
    recent: bool = False,  # heartbeats and reports pick among the 3 latest grants (backups)
) -> None:
    clock = Clock()
    d = Dispatcher(lease_seconds=5, clock=clock, limits=Limits(backoff_base_seconds=backoff))
    for w in WORKERS:
        d.seen(POOL, w, "3.11")
    task_spec = spec(
        total, backoff_limit_per_index=retries, min_success_ratio=ratio, speculation=speculation
    )
    status, _, _ = d.sync(KEY, "u", task_spec, MapTaskStatus(), URL, "3.11", 1)
    held: list[tuple[Grant, Any]] = []  # every grant, with its lease object
    granted: set[str] = set()
    reported_ok = IndexRanges()
    for step, (kind, which, outcome, seconds) in enumerate(events):
        if step == cancel_at:
            task_spec = task_spec.model_copy(update={"suspend": True})
            d.sync(KEY, "u", task_spec, status or MapTaskStatus(), URL, "3.11", 2)
        if kind == "lease":
            got = grant(d, WORKERS[which])
            if got is not None:
                assert got.lease_id not in granted, "a lease id granted twice"
                granted.add(got.lease_id)
                held.append((got, d.tasks[KEY].leases[got.lease_id.partition("/")[2]]))
        elif kind == "heartbeat" and held:
            got, _ = held[pick(which, len(held), recent)]
            d.heartbeat(POOL, WORKERS[which], [got.lease_id])
        elif kind == "report" and held:
            got, lease = held[pick(which, len(held), recent)]
            span = span_of(got)
            if outcome == "ok":
                report = WorkerReport(span, IndexRanges())
            elif outcome == "partial":
                half = IndexRanges.span(got.start, got.start + max(1, got.count // 2))
                report = WorkerReport(half, span - half)
            else:
                report = WorkerReport(IndexRanges(), span if outcome == "user" else IndexRanges())
            kind_ = "user" if outcome == "partial" else outcome
            was_live = lease.state.live
            task = d.tasks[KEY]
            twin = task.leases.get(lease.twin) if lease.twin is not None else None
            # its twin still runs after this event's expiries (the report expires them first)
            racing = twin is not None and twin.expires > clock.now
            accepted = d.report(POOL, got.lease_id, kind_, report)
            # accepted: it was live and is now reported; refused: it is final (it may have
            # expired, or been taken back, on this very event, before the report was read)
            assert accepted == (was_live and lease.state is LeaseState.REPORTED), lease.state
            assert not lease.state.live
            if accepted and (kind_ == "ok" or not racing):  # judged, not set aside
                reported_ok = reported_ok | (span & report.succeeded)
            assert not d.report(POOL, got.lease_id, kind_, report), "a report counted twice"
        elif kind == "tick":
            clock.now += timedelta(seconds=seconds)
        elif kind == "sync":
            clock.now += timedelta(seconds=1)
            new, _, _ = d.sync(KEY, "u", task_spec, status or MapTaskStatus(), URL, "3.11", 2)
            status = new or status
        check(d, total, held, reported_ok)
    clock.now += timedelta(seconds=10)  # past every lease and the stop wait
    d.sync(KEY, "u", task_spec, status or MapTaskStatus(), URL, "3.11", 2)
    check(d, total, held, reported_ok)


def pick(which: int, held: int, recent: bool) -> int:
    return held - 1 - which % held if recent else which % held


def check(
    d: Dispatcher, total: int, held: list[tuple[Grant, Any]], reported_ok: IndexRanges
) -> None:
    task = d.tasks[KEY]
    every = IndexRanges.span(0, total)
    assert task.succeeded == reported_ok  # nothing lost, nothing counted twice
    places = [task.succeeded, task.failed - task.succeeded]
    if not task.status.phase.finished:
        places += [task.fresh.ranges, *(p.ranges for p in task.retries)]
        places += [lease.span for lease in task.leases.values() if lease.holds]
    union = IndexRanges()
    for place in places:
        assert not (union & place), "an index in two places"
        union = union | place
    if task.status.phase.finished:
        assert not task.leases and not task.retries and not task.fresh.ranges
        status = task.status
        assert status.succeeded + status.failed + status.not_run == total
        assert str(task.succeeded) == status.succeeded_indexes
    else:
        assert union == every, "an index in no place"
    assert task.leased == sum(lease.count for lease in task.leases.values() if lease.holds)
    for lease in task.leases.values():
        if lease.twin is not None:  # a race: two live copies of one slice, one of them a backup
            twin = task.leases[lease.twin]
            assert twin.twin == lease.name and twin.backup != lease.backup
            assert (twin.start, twin.count, twin.attempt) == (
                lease.start,
                lease.count,
                lease.attempt,
            )
        else:
            assert lease.holds
    tally, rule = task.speculation, task.spec.speculation_rule
    assert tally.items <= rule.budget_items(total) and tally.wasted <= tally.speculated
    assert tally.won <= tally.speculated
    assert task.done == len(task.succeeded | task.failed)
    for got, lease in held:
        live = task.leases.get(lease.name) is lease
        assert lease.state.live == live, (got.lease_id, lease.state)
