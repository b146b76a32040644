"""A pool task's retry budget holds across a dispatcher (operator) restart.

The dispatcher keeps leases in memory; the user failure counts of indices still in play go
to status.poolFailures with its status flush, and a new Dispatcher (the restarted operator)
built from that status grants exactly the retries that were left. Counted: how many times
each index was leased (= run) before the task gave up, with a function that always fails."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from kubemap.core.ranges import IndexRanges
from kubemap.core.status import Phase
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Mode, StoreRef
from kubemap_operator.pools.dispatch import FLUSH_SECONDS, Dispatcher, Grant
from kubemap_operator.pools.retrystate import counts_in_play, decode, encode
from kubemap_operator.tasks.observe import WorkerReport
from kubemap_operator.tasks.planner import Limits

POOL = ("ns", "p")
KEY = ("ns", "t")
URL = "s3://b/p/t"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def spec(total: int, retries: int) -> MapTaskSpec:
    return MapTaskSpec(
        mode=Mode.FUNCTION, count=total, store=StoreRef(url="s3://b/p"), pool="p",
        backoff_limit_per_index=retries,
    )  # fmt: skip


def new_dispatcher(clock: Clock) -> Dispatcher:
    return Dispatcher(clock=clock, limits=Limits(backoff_base_seconds=0))


def lease(d: Dispatcher) -> Grant | None:
    return asyncio.run(d.lease(POOL, "w", "3.11", 0))


def fail(d: Dispatcher, grant: Grant, runs: Counter[int]) -> None:
    span = IndexRanges.span(grant.start, grant.start + grant.count)
    runs.update(range(grant.start, grant.start + grant.count))
    assert d.report(POOL, grant.lease_id, "user", WorkerReport(IndexRanges(), span))


def flushed(
    d: Dispatcher, clock: Clock, status: MapTaskStatus, total: int, retries: int
) -> MapTaskStatus:
    """What the reconciler last wrote to the API: the status the next operator reads."""
    clock.now += timedelta(seconds=FLUSH_SECONDS)
    new, _, _ = d.sync(KEY, "u", spec(total, retries), status, URL, "3.11", 1)
    return new or status


def run_to_the_end(d: Dispatcher, runs: Counter[int]) -> None:
    while not d.tasks[KEY].status.phase.finished:
        grant = lease(d)
        assert grant is not None, "the task waits for nothing (backoff 0)"
        fail(d, grant, runs)


@pytest.mark.parametrize("crash", ["while the retry waits", "while the retry runs"])
@pytest.mark.parametrize("retries", [1, 2])
def test_the_retry_budget_holds_across_a_restart(crash: str, retries: int) -> None:
    total, clock, runs = 6, Clock(), Counter[int]()
    before = new_dispatcher(clock)
    status, _, _ = before.sync(KEY, "u", spec(total, retries), MapTaskStatus(), URL, "3.11", 1)
    assert status is not None
    first = lease(before)
    assert first is not None and (first.start, first.count) == (0, total)
    fail(before, first, runs)
    if crash == "while the retry runs":
        retry = lease(before)
        assert retry is not None and retry.attempt == 1
        assert before.tasks[KEY].leases["0-1"].failures == 1
    status = flushed(before, clock, status, total, retries)
    assert decode(status.pool_failures) == {1: IndexRanges.span(0, total)}
    # -- the operator restarts: a new dispatcher, state from the API only ------------------
    after = new_dispatcher(clock)
    after.sync(KEY, "u", spec(total, retries), status, URL, "3.11", 1)
    run_to_the_end(after, runs)
    task = after.tasks[KEY].status
    assert task.phase is Phase.FAILED and task.failed == total
    # 1 run + `retries` retries per index, as without the restart (a lost in-flight retry
    # is the restart's, not the user's: it is run again and not counted as a failure).
    assert set(runs.values()) == {1 + retries}, runs
    assert task.pool_failures is None  # finished: nothing left in play


def test_without_a_restart_the_counts_are_the_same() -> None:
    total, retries, clock, runs = 6, 2, Clock(), Counter[int]()
    d = new_dispatcher(clock)
    d.sync(KEY, "u", spec(total, retries), MapTaskStatus(), URL, "3.11", 1)
    run_to_the_end(d, runs)
    assert set(runs.values()) == {1 + retries}


def test_counts_follow_the_highest_attempt_and_skip_recorded_indices() -> None:
    # (user failures so far, indices): a retry waiting after its second failure on 2-4 (its
    # successes 0-1 are recorded), a retry running on 10-14, and a clean lease of 100,000.
    waiting = (2, IndexRanges.span(0, 5))
    running = (1, IndexRanges.span(5, 15))
    clean = (0, IndexRanges.span(15, 100_015))
    counts = counts_in_play([waiting, running, clean], done=IndexRanges.span(0, 2))
    assert counts == {2: IndexRanges.span(2, 5), 1: IndexRanges.span(5, 15)}
    assert encode(counts) == "2:2-4;1:5-14"
    assert decode("2:2-4;1:5-14") == counts
    assert decode("x:1;2:oops;3:7") == {3: IndexRanges.span(7, 8)}  # damaged parts skipped


def test_the_dispatcher_puts_the_counts_of_waiting_and_running_retries_in_play() -> None:
    clock, runs = Clock(), Counter[int]()
    d = new_dispatcher(clock)
    d.seen(POOL, "w2", "3.11")  # two workers: chunks of 5 and 3 of the 10
    status, _, _ = d.sync(KEY, "u", spec(10, 3), MapTaskStatus(), URL, "3.11", 1)
    assert status is not None
    first, second = lease(d), lease(d)
    assert first is not None and second is not None and (first.count, second.count) == (5, 3)
    fail(d, first, runs)  # 0-4 failed once: a retry waits
    retry = lease(d)
    assert retry is not None and (retry.start, retry.attempt) == (0, 1)
    span = IndexRanges.span(0, retry.count)
    two = IndexRanges.of([2])
    assert d.report(POOL, retry.lease_id, "user", WorkerReport(span - two, two))
    again = lease(d)  # index 2, second retry, running
    assert again is not None and (again.start, again.count, again.attempt) == (2, 1, 2)
    counted = flushed(d, clock, status, 10, 3)
    # 2 has failed twice (its retry runs), 4 once (its retry waits); 5-7 run clean
    assert decode(counted.pool_failures) == {2: IndexRanges.of([2]), 1: IndexRanges.of([4])}


def test_a_rerun_round_is_served_by_the_same_dispatcher_with_a_new_function_version() -> None:
    from kubemap_operator.tasks import rerun

    clock, runs = Clock(), Counter[int]()
    d = new_dispatcher(clock)
    task_spec = spec(4, 0).model_copy(update={"min_success_ratio": 0.0})
    d.sync(KEY, "u", task_spec, MapTaskStatus(), URL, "3.11", 1)
    grant = lease(d)
    assert grant is not None and grant.version == ""
    span = IndexRanges.span(0, 4)
    ok, bad = span - IndexRanges.span(2, 3), IndexRanges.span(2, 3)
    assert d.report(POOL, grant.lease_id, "user", WorkerReport(ok, bad))
    done = d.tasks[KEY].status
    assert done.phase is Phase.SUCCEEDED and done.failed == 1  # tolerated
    # kubemap.io/retry=r1 on the finished task (the dispatcher still holds it)
    again, _ = rerun.honour(task_spec, done, [], "r1", clock())
    d.sync(KEY, "u", task_spec, again, URL, "3.11", 1)
    retry = lease(d)
    assert retry is not None and (retry.start, retry.count, retry.version) == (2, 1, "r1")
    fail(d, retry, runs)  # fails again: the new round's own budget (0 retries) decides
    assert d.tasks[KEY].status.phase.finished and runs == Counter({2: 1})
