"""The AIMD limiter (kubemap.core.aimd): bounds, decrease on a throttle, additive recovery,
Retry-After as a floor, one decrease per round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubemap.core.aimd import AimdConfig, AimdLimiter, Limiters, is_throttle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limiter(**kw: float) -> tuple[AimdLimiter, Clock]:
    clock = Clock()
    return AimdLimiter(AimdConfig(**kw), clock=clock), clock


events = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.floats(0, 2)),
        st.tuples(st.just("throttled"), st.floats(0, 5)),
        st.tuples(st.just("succeeded"), st.just(0.0)),
    ),
    max_size=200,
)


@given(
    events,
    st.floats(0.1, 10),
    st.floats(10, 1000),
    st.floats(0, 50),
    st.floats(0.1, 0.9),
)
def test_rate_stays_within_min_and_max(
    steps: list[tuple[str, float]], low: float, high: float, inc: float, dec: float
) -> None:
    aimd, clock = limiter(min_rate=low, max_rate=high, increase=inc, decrease=dec)
    for step, value in steps:
        if step == "reserve":
            clock.now += value
            assert aimd.reserve() >= 0
        elif step == "throttled":
            aimd.throttled(retry_after=value)
        else:
            aimd.succeeded()
        assert low <= aimd.rate <= high


@given(st.integers(1, 50))
def test_a_throttle_lowers_the_rate_and_successes_bring_it_back(sent: int) -> None:
    aimd, clock = limiter(min_rate=0.5, max_rate=1000, increase=1, decrease=0.5)
    for _ in range(sent):
        clock.now += aimd.reserve()
    before = aimd.rate
    aimd.throttled()
    assert aimd.rate < before or aimd.rate == 0.5
    assert aimd.rate <= max(0.5, sent * 0.5)  # from the rate really sent, not the idle limit
    assert aimd.limited
    for _ in range(2000):  # one success a second: +1 request/s each
        clock.now += 1
        aimd.succeeded()
    assert aimd.rate == 1000 and not aimd.limited


def test_increase_is_additive_and_decrease_multiplicative() -> None:
    aimd, clock = limiter(min_rate=1, max_rate=100, increase=2, decrease=0.5)
    for _ in range(200):
        clock.now += aimd.reserve()  # 100 a second: the limit is really used
    aimd.throttled()
    assert aimd.rate == 50
    clock.now += 1
    aimd.succeeded()
    clock.now += 0.5
    aimd.succeeded()
    aimd.succeeded()  # at once: the increase is per second, not per request
    assert aimd.rate == 53


def test_reserve_spaces_requests_at_the_rate() -> None:
    aimd, _ = limiter(min_rate=1, max_rate=4, increase=0)
    waits = [aimd.reserve() for _ in range(5)]
    assert waits == [0, 0.25, 0.5, 0.75, 1.0]


def test_retry_after_is_a_floor_for_the_next_request() -> None:
    aimd, clock = limiter(min_rate=1, max_rate=1000)
    aimd.throttled(retry_after=3)
    assert aimd.reserve() == pytest.approx(3)
    clock.now = 10
    assert aimd.reserve() == 0


def test_one_decrease_per_round_trip() -> None:
    """Throttles of requests sent before the last decrease answered the old rate."""
    aimd, clock = limiter(min_rate=1, max_rate=64, increase=0)
    for _ in range(64):
        clock.now += aimd.reserve()
    sent = [aimd.now() for _ in range(8)]  # eight requests in flight at the same rate
    clock.now += 0.1
    for each in sent:
        aimd.throttled(sent=each)
    assert aimd.rate == 32  # one halving, not eight
    clock.now += 0.5
    aimd.throttled(sent=aimd.now())
    assert aimd.rate == 32  # within the cooldown: still the same round trip
    clock.now += 0.6
    aimd.throttled(sent=aimd.now())
    assert aimd.rate == 16
    assert aimd.throttles == 10


def test_bad_configs_are_refused() -> None:
    for kw in (
        {"min_rate": 0},
        {"min_rate": 5, "max_rate": 1},
        {"decrease": 1},
        {"increase": -1},
        {"cooldown": -1},
    ):
        with pytest.raises(ValueError):
            AimdConfig(**kw)


def test_limiters_one_per_target() -> None:
    limiters = Limiters(AimdConfig(max_rate=10))
    a = limiters.get(("http://s3", "bucket"))
    assert limiters.get(("http://s3", "bucket")) is a
    assert limiters.get(("http://s3", "other")) is not a
    assert len(limiters.items()) == 2


def test_throttle_answers() -> None:
    assert is_throttle(503, "SlowDown")
    assert is_throttle(400, "ThrottlingException")
    assert is_throttle(429)
    assert not is_throttle(500, "InternalError")
    assert not is_throttle(404, "NoSuchKey")
