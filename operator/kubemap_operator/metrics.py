"""Prometheus metrics of the operator, served on KUBEMAP_METRICS_PORT at /metrics.

Labels stay bounded whatever runs: `namespace` and `pool` ("" for tasks that run in pods),
plus small enums (phase, failure_class, kind, verb, resource, code). Never a task's name
nor an index: a cluster that runs a million tasks still has a few hundred series. What
each series means, with example alerts: docs/guides/metrics.md. Counters are exposed with
the `_total` suffix (prometheus_client adds it), durations are in seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from kubemap.core.status import Phase
from kubemap.stores import s3 as s3store
from kubemap.task.timings import bucket_seconds
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

# -- tasks and their items --------------------------------------------------------------------
TASKS = Gauge(
    "kubemap_tasks",
    "MapTasks seen by this operator, by phase",
    ["namespace", "pool", "phase"],
    registry=REGISTRY,
)
ITEMS_SUCCEEDED = Counter(
    "kubemap_items_succeeded", "Items that succeeded", ["namespace", "pool"], registry=REGISTRY
)
ITEMS_FAILED = Counter(
    "kubemap_items_failed",
    "Items that failed for good, by failure class (user, infra, usage)",
    ["namespace", "pool", "failure_class"],
    registry=REGISTRY,
)
ITEMS_RETRIED = Counter(
    "kubemap_items_retried",
    "Items whose attempt failed and that are run again, by failure class",
    ["namespace", "pool", "failure_class"],
    registry=REGISTRY,
)
INDEXES_FAILED = Counter(
    "kubemap_indexes_failed", "Indices that failed for good", registry=REGISTRY
)
ITEM_SECONDS = Histogram(
    "kubemap_item_duration_seconds",
    "Time of the function on one item (from the workers' timing records)",
    ["namespace", "pool"],
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CHUNK_SECONDS = Histogram(
    "kubemap_chunk_duration_seconds",
    "Time of one slice (a pod's, a lease's chunk): fetch + compute + write",
    ["namespace", "pool"],
    registry=REGISTRY,
    buckets=SECONDS_BUCKETS,
)
STORE_ERRORS = Counter(
    "kubemap_store_errors",
    "Store failures that ended a worker's attempt, by kind (store, corrupt, tampered)",
    ["namespace", "pool", "kind"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "kubemap_reconcile_duration_seconds",
    "Time of one MapTask reconcile",
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# -- pods -------------------------------------------------------------------------------------
PODS_CREATED = Counter(
    "kubemap_pods_created", "Worker pods created", ["namespace"], registry=REGISTRY
)
PODS_DELETED = Counter(
    "kubemap_pods_deleted", "Worker pods deleted", ["namespace"], registry=REGISTRY
)
POD_START_SECONDS = Histogram(
    "kubemap_pod_start_latency_seconds",
    "A worker pod's creation to its container's start (scheduling, image pull, start-up)",
    ["namespace"],
    registry=REGISTRY,
    buckets=SECONDS_BUCKETS,
)

# -- warm pools and the dispatcher ------------------------------------------------------------
POOL_WORKERS = Gauge(
    "kubemap_pool_workers",
    "Workers of a WorkerPool by state: wanted (replicas), ready, busy (holding a lease), idle",
    ["namespace", "pool", "state"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "kubemap_dispatcher_queue_depth",
    "Items of a pool's tasks waiting for a lease (not yet run, or due for a retry)",
    ["namespace", "pool"],
    registry=REGISTRY,
)
LEASE_GRANT_SECONDS = Histogram(
    "kubemap_lease_grant_latency_seconds",
    "A worker's ask for work to its lease grant (near 0 while work is queued)",
    ["namespace", "pool"],
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30),
)
LEASES_EXPIRED = Counter(
    "kubemap_leases_expired",
    "Leases whose worker stopped heartbeating: their chunks are run again",
    ["namespace", "pool"],
    registry=REGISTRY,
)

# -- the API server ---------------------------------------------------------------------------
API_REQUESTS = Counter(
    "kubemap_api_requests",
    "Requests of the operator to the Kubernetes API server, by verb, resource and HTTP code",
    ["verb", "resource", "code"],
    registry=REGISTRY,
)
THROTTLED = Counter(
    "kubemap_api_throttled",
    "HTTP 429 answers of the API server (it asked the operator to slow down)",
    ["resource"],
    registry=REGISTRY,
)

# -- helpers ----------------------------------------------------------------------------------
_phases: dict[tuple[str, str], tuple[str, str, Phase]] = {}
_initialised: set[tuple[str, str]] = set()
FAILURE_CLASSES = ("user", "infra", "usage")  # kubemap.core.policy.ExitKind, but OK
STORE_ERROR_KINDS = ("store", "corrupt", "tampered")
_RESOURCES = frozenset(
    {"pods", "maptasks", "workerpools", "deployments", "secrets", "events", "localqueues"}
)


def observe_phase(namespace: str, name: str, phase: Phase | None, pool: str = "") -> None:
    """Track one task's phase (None: the task is gone); the gauge moves by one per change."""
    key = (namespace, name)
    before = _phases.pop(key, None)
    if before is not None:
        TASKS.labels(namespace=before[0], pool=before[1], phase=before[2].value).dec()
    if phase is not None:
        _phases[key] = (namespace, pool, phase)
        TASKS.labels(namespace=namespace, pool=pool, phase=phase.value).inc()


def _initialise(namespace: str, pool: str) -> None:
    """A namespace's (or pool's) counters at 0 from its first item on, so that rate() and
    increase() see its first failure, not only the second."""
    if (namespace, pool) in _initialised:
        return
    _initialised.add((namespace, pool))
    ITEMS_SUCCEEDED.labels(namespace=namespace, pool=pool)
    for failure_class in FAILURE_CLASSES:
        ITEMS_FAILED.labels(namespace=namespace, pool=pool, failure_class=failure_class)
        ITEMS_RETRIED.labels(namespace=namespace, pool=pool, failure_class=failure_class)
    for kind in STORE_ERROR_KINDS:
        STORE_ERRORS.labels(namespace=namespace, pool=pool, kind=kind)
    if pool:
        LEASES_EXPIRED.labels(namespace=namespace, pool=pool)


def count_items(
    namespace: str,
    pool: str,
    *,
    ok: int = 0,
    failure_class: str = "",
    failed: int = 0,
    retried: int = 0,
) -> None:
    _initialise(namespace, pool)
    if ok:
        ITEMS_SUCCEEDED.labels(namespace=namespace, pool=pool).inc(ok)
    if failed:
        ITEMS_FAILED.labels(namespace=namespace, pool=pool, failure_class=failure_class).inc(failed)
    if retried:
        ITEMS_RETRIED.labels(namespace=namespace, pool=pool, failure_class=failure_class).inc(
            retried
        )


def observe_slice(namespace: str, pool: str, seconds: float, item_buckets: dict[int, int]) -> None:
    """One slice's time, and its items' times from the record's own histogram (each item
    counted at its bucket's middle: within 9 % of its time, finer than these buckets)."""
    CHUNK_SECONDS.labels(namespace=namespace, pool=pool).observe(seconds)
    items = ITEM_SECONDS.labels(namespace=namespace, pool=pool)
    for bucket, n in item_buckets.items():
        middle = bucket_seconds(bucket)
        for _ in range(n):
            items.observe(middle)


def observe_pool_workers(namespace: str, pool: str, **states: int) -> None:
    for state, n in states.items():
        POOL_WORKERS.labels(namespace=namespace, pool=pool, state=state).set(n)


def forget_pool(namespace: str, pool: str) -> None:
    """The pool is gone: drop its series (a gauge would show its last value for ever)."""
    for labels in [(namespace, pool, state) for state in ("wanted", "ready", "busy", "idle")]:
        with contextlib.suppress(KeyError):
            POOL_WORKERS.remove(*labels)
    with contextlib.suppress(KeyError):
        QUEUE_DEPTH.remove(namespace, pool)
    for phase in Phase:  # its tasks are gone with it (counters stay: a reset would mislead)
        if not any(k[:2] == (namespace, pool) and k[2] is phase for k in _phases.values()):
            with contextlib.suppress(KeyError):
                TASKS.remove(namespace, pool, phase.value)


def resource_of(path: str) -> str:
    """'pods' of /api/v1/namespaces/ns/pods/x; 'other' for what is not one of ours."""
    parts = path.split("?", 1)[0].split("/")
    for i, part in enumerate(parts):
        if part in _RESOURCES and not (i > 0 and parts[i - 1] == "namespaces"):
            return part
    return "other"


def count_request(verb: str, path: str, code: int) -> None:
    resource = resource_of(path)
    API_REQUESTS.labels(verb=verb.upper(), resource=resource, code=str(code)).inc()
    if code == 429:
        THROTTLED.labels(resource=resource).inc()


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
