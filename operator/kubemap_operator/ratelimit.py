"""A client-side token bucket for pod creation, shared by every task the operator runs.

Besides QPS and burst, the API server can say "slow down" (HTTP 429 with Retry-After):
`pause(seconds)` holds every caller until then, as client-go's flowcontrol does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate ({rate}) must be > 0 and burst ({burst}) >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self) -> float:
        """Seconds until a token is free (0: now), without taking it."""
        now = self._clock()
        self._refill(now)
        wait = max(0.0, self._paused_until - now)
        if self._tokens < 1:
            wait = max(wait, (1 - self._tokens) / self.rate)
        return wait

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                wait = self.delay()
                if wait <= 0:
                    self._tokens -= 1
                    return
                await asyncio.sleep(wait)

    def pause(self, seconds: float) -> None:
        """The server said 429 Retry-After: hold every creation for that long."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))
