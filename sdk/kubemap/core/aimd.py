"""Adaptive request rates: additive increase, multiplicative decrease (AIMD), one limiter per
target (the API server, the dispatcher's grants, each store's endpoint and bucket).

A throttle ("slow down": HTTP 429 from the API server, 503 SlowDown or ThrottlingException
from S3) halves the rate, from the rate actually sent when that is lower than the limit, so
a limit far above the real traffic still bites; successes add the rate back at `increase`
requests per second each second (in time, not per request: a fast client recovers no faster
than a slow one), up to `max_rate`. `Retry-After` is a floor: no request leaves before it.
One decrease per round trip: throttles of requests sent before the last decrease, or within
`cooldown` of it, answered the old rate and do not halve it again (as TCP counts one loss
per window); without that, a steady share of throttles would drive any rate to the floor.

Pure: no sleeping, no I/O. `reserve()` says how long the caller waits before sending; the
caller sleeps (time.sleep or asyncio.sleep) and reports the answer with `throttled(sent)` or
`succeeded()`. A throttle is not a failure: callers retry it without spending their retry
budget, only real failures count.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# S3's and AWS's names for "slow down" (botocore's standard retry mode knows the same ones).
THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "SlowDownRead",
        "SlowDownWrite",
    }
)
THROTTLE_STATUSES = frozenset({429, 503})


def is_throttle(status: int | None, code: str | None = None) -> bool:
    """An answer that means "slow down" rather than "failed"."""
    return (code or "") in THROTTLE_CODES or status in THROTTLE_STATUSES


@dataclass(frozen=True)
class AimdConfig:
    """Requests per second: start at `max_rate` (no limit felt until a throttle), never below
    `min_rate`; `decrease` multiplies on a throttle (at most once per `cooldown` seconds),
    `increase` is added per second of successes."""

    min_rate: float = 1.0
    max_rate: float = 1000.0
    increase: float = 1.0
    decrease: float = 0.5
    cooldown: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.min_rate <= self.max_rate:
            raise ValueError(
                f"min_rate ({self.min_rate}) must be > 0 and <= max_rate ({self.max_rate})"
            )
        if self.increase < 0 or not 0 < self.decrease < 1 or self.cooldown < 0:
            raise ValueError(
                f"increase ({self.increase}) and cooldown ({self.cooldown}) must be >= 0 and "
                f"decrease ({self.decrease}) in (0, 1)"
            )


class AimdLimiter:
    """One target's adaptive rate. Thread-safe; the caller does the waiting."""

    def __init__(
        self, config: AimdConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or AimdConfig()
        self._clock = clock
        self._rate = self.config.max_rate
        self._next = clock()  # when the next request may leave
        self._floor = 0.0  # Retry-After: nothing leaves before this
        self._last_decrease = float("-inf")
        self._last_increase = self._next
        self._sent: deque[float] = deque()  # send times in the last second (the real rate)
        self._lock = threading.Lock()
        self.throttles = 0

    @property
    def rate(self) -> float:
        """The current limit, in requests per second."""
        return self._rate

    @property
    def limited(self) -> bool:
        """A throttle lowered the limit and it has not recovered yet."""
        return self._rate < self.config.max_rate

    def reserve(self) -> float:
        """Take the next slot: seconds the caller waits before sending (0: now)."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next, self._floor)
            self._next = start + 1.0 / self._rate
            self._sent.append(start)
            while self._sent and self._sent[0] < start - 1.0:
                self._sent.popleft()
            return start - now

    def delay(self) -> float:
        """Seconds until the next slot, without taking it (0: one is free now)."""
        with self._lock:
            return max(0.0, max(self._next, self._floor) - self._clock())

    def note_sent(self) -> None:
        """A request left by another pacing (a token bucket): counted in the real rate."""
        with self._lock:
            now = self._clock()
            self._sent.append(now)
            while self._sent and self._sent[0] < now - 1.0:
                self._sent.popleft()

    def throttled(self, retry_after: float | None = None, sent: float | None = None) -> None:
        """The target said slow down to a request sent at `sent` (clock time; None: now)."""
        with self._lock:
            now = self._clock()
            self.throttles += 1
            if retry_after is not None and retry_after > 0:
                self._floor = max(self._floor, now + retry_after)
            if (sent is not None and sent < self._last_decrease) or (
                now - self._last_decrease < self.config.cooldown
            ):
                return  # an answer to the rate before the last decrease
            sending = len(self._sent)  # requests in the last second
            base = min(self._rate, float(sending)) if sending else self._rate
            self._rate = max(self.config.min_rate, base * self.config.decrease)
            self._last_decrease = now
            self._next = max(self._next, now + 1.0 / self._rate)

    def succeeded(self) -> None:
        with self._lock:
            now = self._clock()
            elapsed = min(1.0, max(0.0, now - self._last_increase))
            self._last_increase = now
            self._rate = min(self.config.max_rate, self._rate + self.config.increase * elapsed)

    def now(self) -> float:
        """The limiter's clock (for `throttled(sent=...)`)."""
        return self._clock()


class Limiters:
    """The limiters of one process, one per target key; made on first use."""

    def __init__(self, config: AimdConfig | None = None) -> None:
        self.config = config or AimdConfig()
        self._limiters: dict[Hashable, AimdLimiter] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, config: AimdConfig | None = None) -> AimdLimiter:
        with self._lock:
            limiter = self._limiters.get(key)
            if limiter is None:
                limiter = self._limiters[key] = AimdLimiter(config or self.config)
            return limiter

    def items(self) -> list[tuple[Hashable, AimdLimiter]]:
        with self._lock:
            return list(self._limiters.items())

    def clear(self) -> None:
        """Forget every limiter (a forked child starts afresh)."""
        self._limiters = {}
        self._lock = threading.Lock()
