"""The pool worker's Stopper: a revoked lease stops the user's function, in the worker process
(its main thread: a signal interrupts even a sleep) and in a worker thread (the integration
tests: an asynchronous exception), and only while the function runs."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest
from kubemap.runtime.poolworker import STOP_SIGNAL, Revoked, Stopper


@pytest.fixture
def restore_signal() -> Iterator[None]:
    previous = signal.getsignal(STOP_SIGNAL)
    yield
    signal.signal(STOP_SIGNAL, previous)


def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_in_the_main_thread_a_revoke_interrupts_a_sleeping_function(restore_signal: None) -> None:
    stopper = Stopper()
    stopper.begin("t/0-0")
    threading.Timer(0.2, stopper.revoke, args=("t/0-0",)).start()
    began = time.monotonic()
    with pytest.raises(Revoked):
        stopper.wrap(sleepy)(5.0)
    assert time.monotonic() - began < 2.0  # not the 5 s the function asked for


def test_in_a_worker_thread_a_revoke_stops_the_function_at_its_next_step() -> None:
    outcome: list[str] = []
    ready = threading.Event()

    def worker() -> None:
        stopper_box.append(Stopper())
        stopper_box[0].begin("t/0-0")
        ready.set()
        try:
            stopper_box[0].wrap(lambda _: [sleepy(0.05) for _ in range(100)])(None)
            outcome.append("ran to the end")
        except Revoked:
            outcome.append("stopped")

    stopper_box: list[Stopper] = []
    thread = threading.Thread(target=worker)
    thread.start()
    ready.wait(5)
    time.sleep(0.2)
    began = time.monotonic()
    stopper_box[0].revoke("t/0-0")
    thread.join(5)
    assert outcome == ["stopped"] and time.monotonic() - began < 1.0


def test_a_revoke_of_another_lease_or_between_items_stops_nothing_midway(
    restore_signal: None,
) -> None:
    stopper = Stopper()
    stopper.begin("t/5-0")
    stopper.revoke("t/0-0")  # an earlier lease's late answer: not this one
    guarded = stopper.wrap(sleepy)
    assert guarded(0.01) == 0.01
    stopper.revoke("t/5-0")  # between two items: the next item does not start
    with pytest.raises(Revoked):
        guarded(0.01)
    stopper.end()
    stopper.begin("t/9-0")  # the next lease runs normally
    assert stopper.wrap(sleepy)(0.01) == 0.01
