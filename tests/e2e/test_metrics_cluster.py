"""The operator's metrics and the status's timing summary on the test cluster.

After a small MapTask (pods) and a small warm-pool task, a REAL scrape of the operator's
/metrics (parsed with prometheus_client's exposition parser) counts their items, slices,
pods and leases, and names every metric the chart's Grafana dashboard queries
(tests/tools/promqlcheck.py parses each PromQL expression). No Prometheus server is run:
building one from Go modules does not fit the CI budget; the exposition format is what it
would scrape. Counts only.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubemap
import pytest
from e2ekit import NAMESPACE, get_task, opts
from kubemap.api.workerpool import WorkerPool
from kubemap.resources.maptask import TimingSummary
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import promqlcheck

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed"),
]

OPERATOR_NAMESPACE = "kubemap-system"
SLOW_INDEX = 5


def metrics_url(api: client.ApiClient) -> str:
    """The operator's /metrics: the port its Deployment gives it (KUBEMAP_METRICS_PORT), on
    the address it listens on (the test cluster's pods are host processes: loopback)."""
    deployments = client.AppsV1Api(api).list_namespaced_deployment(
        OPERATOR_NAMESPACE, label_selector="app.kubernetes.io/component=operator"
    )
    container = deployments.items[0].spec.template.spec.containers[0]
    env = {e.name: e.value for e in container.env or [] if e.value is not None}
    port = int(env.get("KUBEMAP_METRICS_PORT", "0"))
    if port == 0:
        pytest.skip("the operator serves no metrics (metrics.enabled=false)")
    address = env.get("KUBEMAP_LISTEN_ADDRESS", "127.0.0.1")
    return f"http://{'127.0.0.1' if address == '0.0.0.0' else address}:{port}/metrics"


def scrape(url: str) -> str:
    deadline = time.monotonic() + 60  # the operator may be restarting
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return str(answer.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


def slow_at(index: int) -> Callable[[int], int]:
    def fn(x: int) -> int:
        time.sleep(0.5 if x == index else 0.005)
        return x * 2

    return fn


def timing_of(custom: client.CustomObjectsApi, name: str) -> TimingSummary | None:
    body: dict[str, Any] = get_task(custom, name) or {}
    raw = (body.get("status") or {}).get("timing")
    return TimingSummary.model_validate(raw) if raw else None


def test_a_scrape_counts_a_map_and_a_pool_task_and_resolves_the_dashboard(
    api: client.ApiClient,
    custom: client.CustomObjectsApi,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
) -> None:
    url = metrics_url(api)
    before = samples(scrape(url))
    ns = {"namespace": NAMESPACE}

    run = kubemap.submit(
        slow_at(SLOW_INDEX),
        range(6),
        **opts(name=unique("metrics"), items_per_pod=2, parallelism=3),
    )
    assert run.results() == [x * 2 for x in range(6)]
    wp = pool(replicas=1, idle_ttl_seconds=0)
    pooled = kubemap.submit(slow_at(-1), range(20), **opts(name=unique("mpool"), pool=wp.name))
    assert pooled.results() == [x * 2 for x in range(20)]

    # the status's summary: written with the status patches, the slow pod named
    summary = timing_of(custom, run.name)
    assert summary is not None and summary.items == 6
    assert summary.slowest_worker is not None and summary.slowest_worker.startswith(
        f"{run.name}-{SLOW_INDEX - SLOW_INDEX % 2}-"
    )
    pooled_summary = timing_of(custom, pooled.name)
    assert pooled_summary is not None and pooled_summary.items == 20
    assert pooled_summary.slowest_worker is not None
    assert wp.name in pooled_summary.slowest_worker  # the pool Deployment's pod

    text = scrape(url)
    after = samples(text)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("kubemap_items_succeeded_total", **ns, pool="") == 6
    assert grew("kubemap_items_succeeded_total", **ns, pool=wp.name) == 20
    assert grew("kubemap_item_duration_seconds_count", **ns, pool="") == 6
    assert grew("kubemap_item_duration_seconds_count", **ns, pool=wp.name) == 20
    assert grew("kubemap_chunk_duration_seconds_count", **ns, pool="") == 3
    assert grew("kubemap_chunk_duration_seconds_count", **ns, pool=wp.name) >= 1
    assert grew("kubemap_pods_created_total", **ns) == 3
    assert grew("kubemap_pod_start_latency_seconds_count", **ns) == 3
    assert grew("kubemap_lease_grant_latency_seconds_count", **ns, pool=wp.name) >= 1
    assert grew("kubemap_api_requests_total", verb="POST", resource="pods") >= 3
    assert total(after, "kubemap_pool_workers", **ns, pool=wp.name, state="wanted") == 1
    assert total(after, "kubemap_tasks", **ns, phase="Succeeded") >= 2
    assert total(after, "kubemap_items_failed_total", **ns, pool="", failure_class="user") == (
        total(before, "kubemap_items_failed_total", **ns, pool="", failure_class="user")
    )
    labels = {label for (_, ls) in after for label, _ in ls}
    assert labels <= promqlcheck.BOUNDED_LABELS
    assert promqlcheck.missing(text) == []
