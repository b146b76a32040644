"""S3 throttling against a real SeaweedFS behind a loopback front that answers 503 SlowDown:
the store waits a throttle out through its AIMD limiter, spending none of botocore's
attempts, and the rate it sends falls while throttled."""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubemap.stores import s3 as s3store
from kubemap.stores.s3 import S3Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from s3_throttle_proxy import S3ThrottleProxy

pytestmark = pytest.mark.slow


@pytest.fixture
def front(s3_store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3ThrottleProxy]:
    import os

    with S3ThrottleProxy(os.environ["AWS_ENDPOINT_URL_S3"]) as proxy:
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore's budget: one retry per call
        s3store.LIMITERS.clear()
        yield proxy
    s3store.LIMITERS.clear()


def store(proxy: S3ThrottleProxy, bucket: str) -> S3Store:
    return S3Store(bucket, f"t-{uuid.uuid4().hex[:12]}", endpoint=proxy.url)


def test_a_throttle_spends_no_attempt(front: S3ThrottleProxy, s3_store_url: str) -> None:
    """Every request refused for a while: far more throttles than botocore's 2 attempts, and
    every call succeeds once the throttle ends."""
    bucket = s3_store_url.split("/")[2]
    target = store(front, bucket)
    target.put("warm", b"x")
    front.throttle(3.5, share=1.0)
    target.put("a", b"1")
    assert target.get("a") == b"1"
    assert target.size("a") == 1
    assert sorted(target.list()) == ["a", "warm"]
    assert front.refused() >= 3
    assert target.limiter.throttles == front.refused()  # each one reached the limiter


def test_the_rate_falls_while_throttled_and_recovers(
    front: S3ThrottleProxy, s3_store_url: str
) -> None:
    bucket = s3_store_url.split("/")[2]
    target = store(front, bucket)
    for n in range(30):
        target.put(f"k{n}", b"v")
    unthrottled = target.limiter.rate
    front.throttle(30, share=0.3)
    for n in range(30):
        assert target.get(f"k{n}") == b"v"
    throttled = target.limiter.rate
    assert front.refused() >= 9  # 30 % of at least 30 requests
    assert throttled < unthrottled / 4, (throttled, unthrottled)
    front.throttle(0)
    for n in range(300):
        target.size(f"k{n % 30}")
    # Additive recovery, `increase` a second: the limit itself paces these 300 requests, so
    # they take at least the time in which r0 + increase * t lets 300 through
    # (r0 t + increase t^2 / 2 >= 300), and the rate has grown by increase * t by then.
    increase = s3store.STORE_LIMITS.increase
    assert target.limiter.rate >= 0.9 * math.sqrt(throttled**2 + 2 * increase * 300)
    assert target.limiter.rate > throttled
