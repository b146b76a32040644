"""How fast the operator goes: a token bucket for pod creation, shared by every task, and a
per-object backoff after errors.

Besides QPS and burst, the API server can say "slow down" (HTTP 429 with Retry-After):
`throttled(seconds)` holds every caller until then, as client-go's flowcontrol does, and
halves the rate (kubemap.core.aimd); successful creates add it back over seconds, up to the
configured QPS. A 429 is not a failure: nothing counts it against a retry budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from kubemap.core.aimd import AimdConfig, AimdLimiter

K = TypeVar("K", bound=Hashable)


class TokenBucket:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate ({rate}) must be > 0 and burst ({burst}) >= 1")
        self.max_rate = rate
        self.burst = burst
        self._clock = clock
        # The rate adapts between a tenth of the QPS (at most 1/s) and the QPS: halved by a
        # 429, a tenth of the QPS back each second of successful creates.
        self.adaptive = AimdLimiter(
            AimdConfig(
                min_rate=min(1.0, rate / 10), max_rate=rate, increase=rate / 10, decrease=0.5
            ),
            clock=clock,
        )
        self._tokens = float(burst)
        self._stamp = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        """Creations per second allowed now."""
        return self.adaptive.rate

    @property
    def limited(self) -> bool:
        """A 429 lowered the rate and it has not recovered yet."""
        return self.adaptive.limited

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
                    self.adaptive.note_sent()
                    return
                await asyncio.sleep(wait)

    def pause(self, seconds: float) -> None:
        """Hold every creation for that long."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    def throttled(self, retry_after: float) -> None:
        """The server said 429 Retry-After: hold every creation for that long, then go on at
        half the rate, with no burst saved up."""
        now = self._clock()
        self._refill(now)
        # Creates in flight together get their 429s together: one halving per pause.
        self.adaptive.throttled(retry_after, sent=None if now >= self._paused_until else -1e18)
        self._tokens = min(self._tokens, 0.0)
        self.pause(retry_after)

    def succeeded(self) -> None:
        self.adaptive.succeeded()


class FailureBackoff(Generic[K]):
    """Per-object exponential backoff, as client-go's ItemExponentialFailureRateLimiter: the
    n-th failure in a row of one key waits base * 2**(n-1) seconds, at most `cap`; a success
    (or forgetting the key) starts it over. One object failing never slows another."""

    def __init__(
        self, base: float = 0.5, cap: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"base ({base}) must be > 0 and cap ({cap}) >= base")
        self.base = base
        self.cap = cap
        self._clock = clock
        self._failures: dict[K, int] = {}
        self._due: dict[K, float] = {}

    def failed(self, key: K) -> float:
        """One more failure of key: seconds to wait before its next try."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(self.cap, self.base * 2.0 ** min(failures - 1, 64))
        self._due[key] = self._clock() + delay
        return delay

    def succeeded(self, key: K) -> None:
        self._failures.pop(key, None)
        self._due.pop(key, None)

    def failures(self, key: K) -> int:
        """Failures of key in a row, since its last success."""
        return self._failures.get(key, 0)

    def waiting(self, key: K) -> bool:
        """Key failed and its backoff has not run out yet (a periodic resync should skip it)."""
        return self._clock() < self._due.get(key, 0.0)
