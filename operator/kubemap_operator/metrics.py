"""Prometheus metrics of the operator, served on KUBEMAP_METRICS_PORT at /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kubemap.core.status import Phase
from kubemap.stores import s3 as s3store
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()
TASKS = Gauge(
    "kubemap_tasks", "MapTasks seen by this operator, by phase", ["phase"], registry=REGISTRY
)
PODS_CREATED = Counter("kubemap_pods_created", "Worker pods created", registry=REGISTRY)
PODS_DELETED = Counter("kubemap_pods_deleted", "Worker pods deleted", registry=REGISTRY)
INDEXES_FAILED = Counter(
    "kubemap_indexes_failed", "Indices that failed for good", registry=REGISTRY
)
THROTTLED = Counter("kubemap_api_throttled", "HTTP 429 answers to pod creation", registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    "kubemap_reconcile_duration_seconds",
    "Time of one MapTask reconcile",
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_phases: dict[tuple[str, str], Phase] = {}


def observe_phase(namespace: str, name: str, phase: Phase | None) -> None:
    """Track one task's phase (None: the task is gone) and refresh the per-phase gauge."""
    key = (namespace, name)
    if phase is None:
        _phases.pop(key, None)
    else:
        _phases[key] = phase
    for each in Phase:
        TASKS.labels(phase=each.value).set(sum(1 for p in _phases.values() if p is each))


def serve(port: int, address: str) -> None:
    if port > 0:
        start_http_server(port, addr=address, registry=REGISTRY)


# -- Adaptive rate limits (kubemap.core.aimd), read when scraped ------------------------------
# target: "apiserver" (pod creation), "dispatch" (a pool's lease grants; scope
# "namespace/pool"), "store" (this process's S3 requests; scope "endpoint/bucket"). Bounded
# labels: never a task's name.
LimitSource = Callable[[], Iterable[tuple[str, str, float]]]
_limit_sources: list[LimitSource] = []


def add_limit_source(source: LimitSource) -> None:
    """`source()` lists (target, scope, requests per second) when the metrics are scraped."""
    _limit_sources.append(source)


def _store_limits() -> Iterable[tuple[str, str, float]]:
    for key, limiter in s3store.LIMITERS.items():
        endpoint, bucket = key if isinstance(key, tuple) else ("", str(key))
        yield "store", f"{endpoint}/{bucket}", limiter.rate


class _LimitCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "kubemap_rate_limit",
            "Current adaptive request-rate limit (requests per second) per target: halved by "
            "a throttle (429, 503 SlowDown), recovering additively",
            labels=["target", "scope"],
        )
        for source in (*_limit_sources, _store_limits):
            for target, scope, rate in source():
                family.add_metric([target, scope], rate)
        yield family


REGISTRY.register(_LimitCollector())
