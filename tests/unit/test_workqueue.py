"""The operator's work queue: coalescing, delayed wake-ups, forget and shutdown."""

from __future__ import annotations

import asyncio

import pytest
from kubemap_operator.workqueue import WorkQueue


class Recorder:
    """A reconcile that records its runs, can be held open, and asks for a delay."""

    def __init__(self, delay: float | None = None) -> None:
        self.runs: list[str] = []
        self.delay = delay
        self.gate = asyncio.Event()
        self.gate.set()
        self.active = 0
        self.most_active = 0

    async def __call__(self, key: str) -> float | None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        self.runs.append(key)
        await self.gate.wait()
        self.active -= 1
        return self.delay


@pytest.mark.asyncio
async def test_triggers_during_a_run_coalesce_into_one_more_run() -> None:
    run = Recorder()
    queue: WorkQueue[str] = WorkQueue(run, longest_delay=60)
    run.gate.clear()
    first = asyncio.create_task(queue.trigger("a"))
    await asyncio.sleep(0)
    for _ in range(5):  # five events while the first reconcile is still running
        await queue.trigger("a")
    run.gate.set()
    await first
    assert run.runs == ["a", "a"]  # exactly one more run, not five, and none lost
    assert run.most_active == 1  # never two reconciles of one key at once


@pytest.mark.asyncio
async def test_different_keys_run_independently() -> None:
    run = Recorder()
    queue: WorkQueue[str] = WorkQueue(run, longest_delay=60)
    run.gate.clear()
    both = asyncio.gather(queue.trigger("a"), queue.trigger("b"))
    await asyncio.sleep(0)
    assert run.active == 2
    run.gate.set()
    await both
    assert sorted(run.runs) == ["a", "b"]


@pytest.mark.asyncio
async def test_a_requested_delay_wakes_the_key_again() -> None:
    run = Recorder(delay=0.1)
    queue: WorkQueue[str] = WorkQueue(run, longest_delay=60)
    await queue.trigger("a")
    assert queue.pending() == {"a"}
    run.delay = None  # the second run asks for nothing more
    await asyncio.sleep(0.3)
    assert run.runs == ["a", "a"] and queue.pending() == set()


@pytest.mark.asyncio
async def test_a_later_delay_replaces_an_earlier_one_and_long_ones_are_left_to_the_timer() -> None:
    run = Recorder()
    queue: WorkQueue[str] = WorkQueue(run, longest_delay=10)
    queue.schedule("a", 5.0)
    queue.schedule("a", 0.05)  # replaces the 5 s wake-up
    queue.schedule("b", 30.0)  # past the periodic timer: not scheduled
    assert queue.pending() == {"a"}
    await asyncio.sleep(0.2)
    assert run.runs == ["a"]


@pytest.mark.asyncio
async def test_forget_drops_the_wake_up() -> None:
    run = Recorder()
    queue: WorkQueue[str] = WorkQueue(run, longest_delay=10)
    queue.schedule("a", 0.05)
    queue.forget("a")
    await asyncio.sleep(0.15)
    assert run.runs == []


@pytest.mark.asyncio
async def test_shutdown_cancels_wake_ups_and_waits_for_runs_in_flight() -> None:
    run = Recorder(delay=0.05)
    queue: WorkQueue[str] = WorkQueue(run, longest_delay=10)
    queue.schedule("a", 0.05)
    queue.schedule("b", 5.0)
    await asyncio.sleep(0.08)  # "a" fired and is running (held at the gate)
    run.gate.clear()
    await asyncio.sleep(0.08)
    release = asyncio.get_running_loop().call_later(0.1, run.gate.set)
    await queue.shutdown(grace=2.0)
    release.cancel()
    assert queue.pending() == set()  # "b" was cancelled, "a" did not schedule again
    await queue.trigger("c")  # a closed queue starts nothing
    assert "b" not in run.runs and "c" not in run.runs
    assert run.active == 0
