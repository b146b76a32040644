"""A per-object work queue for level-based reconciles, as client-go's workqueue behaves:

* one reconcile of a key at a time; a trigger that arrives while it runs is coalesced
  into exactly one more run after it (never lost, never piled up);
* a reconcile may ask to run again after a delay (a retry or a TTL that falls due before
  the next timer tick): the latest request wins, earlier ones are cancelled;
* shutdown cancels every pending wake-up and waits for the runs in flight.

kopf serialises handlers per object but has no "run once more after this one" nor
sub-interval wake-ups short of raising TemporaryError (which would log every retry as an
error), so the queue stays ours; tests/unit/test_workqueue.py covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
MIN_DELAY = 0.05


class WorkQueue(Generic[K]):
    def __init__(
        self, run: Callable[[K], Awaitable[float | None]], *, longest_delay: float
    ) -> None:
        """run(key) reconciles key and returns None or seconds until it wants to run again;
        delays of `longest_delay` or more are left to the periodic timer."""
        self._run = run
        self._longest = longest_delay
        self._running: set[K] = set()
        self._again: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def trigger(self, key: K) -> None:
        """Run now, or once more after the run in progress."""
        if self._closed:
            return
        if key in self._running:
            self._again.add(key)
            return
        self._running.add(key)
        try:
            while True:
                self._again.discard(key)
                delay = await self._run(key)
                if delay is not None:
                    self.schedule(key, delay)
                if key not in self._again or self._closed:
                    break
        finally:
            self._running.discard(key)

    def schedule(self, key: K, delay: float) -> None:
        """Wake key up after `delay` seconds (replacing an earlier wake-up)."""
        if self._closed or delay >= self._longest:
            return
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(max(MIN_DELAY, delay), self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        task = asyncio.get_running_loop().create_task(self.trigger(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, key: K) -> None:
        """The object is gone: drop its wake-up."""
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()
        self._again.discard(key)

    def pending(self) -> set[K]:
        """Keys with a wake-up scheduled (for tests and metrics)."""
        return set(self._timers)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop scheduling, cancel wake-ups, let runs in flight finish (then cancel them)."""
        self._closed = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*late, return_exceptions=True)
