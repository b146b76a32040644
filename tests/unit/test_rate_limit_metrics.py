"""The operator's adaptive limits are scraped as one gauge per target, with bounded labels."""

from __future__ import annotations

from kubemap.stores import s3 as s3store
from kubemap_operator import metrics
from prometheus_client import generate_latest


def test_limits_per_target_are_in_the_metrics() -> None:
    s3store.LIMITERS.clear()
    limiter = s3store.LIMITERS.get(("http://127.0.0.1:8333", "kubemap"))
    for _ in range(3):
        limiter.reserve()
    limiter.throttled()
    metrics.add_limit_source(lambda: [("apiserver", "", 7.5)])
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'kubemap_rate_limit{scope="",target="apiserver"} 7.5' in text
    assert (
        f'kubemap_rate_limit{{scope="http://127.0.0.1:8333/kubemap",target="store"}} '
        f"{limiter.rate}" in text
    )
    s3store.LIMITERS.clear()
