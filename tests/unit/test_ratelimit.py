"""Per-object error backoff: the delays double from 0.5 s up to 60 s, per key, reset by a success."""

from __future__ import annotations

import pytest
from kubemap_operator.ratelimit import FailureBackoff


def test_delays_double_from_half_a_second_up_to_the_cap() -> None:
    backoff: FailureBackoff[str] = FailureBackoff(base=0.5, cap=60.0, clock=lambda: 0.0)
    delays = [backoff.failed("a") for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert backoff.failures("a") == 10


def test_a_success_starts_over_and_keys_do_not_share_a_count() -> None:
    backoff: FailureBackoff[str] = FailureBackoff(base=0.5, cap=60.0, clock=lambda: 0.0)
    assert [backoff.failed("a") for _ in range(3)] == [0.5, 1.0, 2.0]
    assert backoff.failed("b") == 0.5  # another object is not slowed by a's failures
    backoff.succeeded("a")
    assert backoff.failures("a") == 0
    assert backoff.failed("a") == 0.5
    assert backoff.failed("b") == 1.0


def test_waiting_until_the_delay_has_passed() -> None:
    now = [100.0]
    backoff: FailureBackoff[str] = FailureBackoff(base=0.5, cap=60.0, clock=lambda: now[0])
    assert not backoff.waiting("a")
    backoff.failed("a")
    backoff.failed("a")  # 1 s from now
    assert backoff.waiting("a")
    now[0] += 1.0
    assert not backoff.waiting("a")
    backoff.failed("a")
    backoff.succeeded("a")
    assert not backoff.waiting("a")


def test_a_cap_below_the_base_is_refused() -> None:
    with pytest.raises(ValueError, match="cap"):
        FailureBackoff(base=2.0, cap=1.0)
