"""The dispatcher's grant rate per pool: unlimited until the pool's workers report store
throttles, then paced by the pool's AIMD limiter, and back once reports come in clean."""

from __future__ import annotations

import asyncio

from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Mode, StoreRef
from kubemap_operator.pools.dispatch import Dispatcher

POOL, KEY, URL = ("ns", "p"), ("ns", "t"), "s3://b/p/t"


def dispatcher(total: int) -> Dispatcher:
    d = Dispatcher(lease_seconds=60)
    spec = MapTaskSpec(
        mode=Mode.FUNCTION,
        count=total,
        store=StoreRef(url="s3://b/p"),
        pool="p",
        parallelism=total,
    )
    d.sync(KEY, "u", spec, MapTaskStatus(), URL, "3.11", 1)
    return d


def burst(d: Dispatcher, asks: int) -> int:
    """Grants to `asks` workers asking at the same moment, none waiting."""

    for n in range(asks):
        d.seen(POOL, f"w{n}", "3.11")  # known workers: small chunks for each

    async def ask_all() -> int:
        grants = [await d.lease(POOL, f"w{n}", "3.11", 0) for n in range(asks)]
        return sum(1 for g in grants if g is not None)

    return asyncio.run(ask_all())


def test_grants_are_paced_only_after_workers_report_throttles() -> None:
    d = dispatcher(1000)
    assert burst(d, 10) == 10  # no throttle reported: no pacing
    d.store_throttles(POOL, 3)  # a worker waited out 3 SlowDowns on its last lease
    limit = d.grant_limits.get(POOL)
    assert limit.limited and limit.rate <= 500
    assert burst(d, 10) <= 2  # at the lowered rate, a burst of asks gets a grant or two
    for _ in range(200):
        d.store_throttles(POOL, 0)
    assert d.grant_limits.get(POOL).rate > limit.config.min_rate
    assert d.grant_limits.get(("ns", "other")).rate == limit.config.max_rate  # per pool
