"""The operator's metrics and the status's timing summary, driven through the real reconciler
and dispatcher with a recording fake API, then read back from a scrape of the registry
(prometheus_client's own exposition format and parser).

Counted, never timed: status patches (the summary adds none), items, observations, series.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from kubemap.contract import ANNOTATION_COUNT, LABEL_INDEX, POD_FINALIZER, task_label
from kubemap.core.attempts import Report
from kubemap.core.ranges import IndexRanges
from kubemap.core.status import Phase
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Mode, StoreRef, TimingSummary
from kubemap.resources.termination import SUMMARY_LIMIT, SliceOutcome, summary_line
from kubemap.task.timings import SliceTiming, bucket_of
from kubemap_operator import metrics, taskstats
from kubemap_operator.kubeapi import counted
from kubemap_operator.pools.dispatch import Dispatcher
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.observe import WorkerReport
from kubemap_operator.tasks.plantypes import Limits
from kubemap_operator.tasks.reconcile import Reconciler
from kubemap_operator.tasks.watchcache import WatchCache
from kubernetes.client.exceptions import ApiException
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import promqlcheck

NS = "metrics-ns"


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def timing(worker: str, first: int, count: int, per_item: float, start: float) -> SliceTiming:
    return SliceTiming(
        first=first,
        count=count,
        attempt=0,
        worker=worker,
        start=start,
        fetch=0.01,
        compute=per_item * count,
        write=0.01,
        ran=count,
        succeeded=count,
        buckets={bucket_of(per_item): count},
        slowest=(first, per_item),
    )


def pod(name: str, first: int, count: int, message: str, exit_code: int = 0) -> dict[str, Any]:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {LABEL_INDEX: str(first)},
            "annotations": {ANNOTATION_COUNT: str(count)},
            "finalizers": [POD_FINALIZER],
            "creationTimestamp": created.isoformat(),
            "ownerReferences": [{"uid": "uid-t", "controller": True, "kind": "MapTask"}],
        },
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "message": message,
                            "startedAt": (created + timedelta(seconds=3)).isoformat(),
                        }
                    }
                }
            ],
        },
    }


class FakeApi:
    def __init__(self, task: dict[str, Any]) -> None:
        self.task = task
        self.calls: list[str] = []
        self.patches: list[dict[str, Any]] = []

    async def get_task(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get")
        return self.task

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append("status")
        self.patches.append(status)
        meta = self.task["metadata"]
        self.task = {
            **self.task,
            "metadata": {**meta, "resourceVersion": str(int(meta["resourceVersion"]) + 1)},
            "status": {**(self.task.get("status") or {}), **status},
        }
        return self.task

    async def remove_finalizer(self, namespace: str, pod: dict[str, Any]) -> None:
        self.calls.append("release")

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.calls.append("delete")

    async def create_pod(
        self, namespace: str, body: dict[str, Any]
    ) -> Literal["created", "exists"]:
        self.calls.append("create")
        return "created"

    async def delete_task(self, namespace: str, name: str) -> None:
        self.calls.append("delete-task")


def run_task(name: str, *, timed: bool) -> tuple[FakeApi, Reconciler]:
    """Three finished pods of a 3-item task (one of them slow), reconciled twice."""
    task = {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": name, "namespace": NS, "uid": "uid-t", "generation": 1,
                     "resourceVersion": "1"},
        "spec": {"mode": "Container", "template": {"image": "busybox"}, "count": 3,
                 "parallelism": 3},
    }  # fmt: skip
    pods = []
    for i, per_item in enumerate((0.1, 0.1, 0.8)):
        outcome = SliceOutcome(
            succeeded=IndexRanges.span(i, i + 1),
            timings=(timing(f"{name}-{i}-0", i, 1, per_item, 1000.0 + i),) if timed else (),
        )
        pods.append(pod(f"{name}-{i}-0", i, 1, summary_line(outcome)))
    api = FakeApi(task)
    cache = WatchCache({(NS, name): [api.task]}, {(NS, task_label(name)): pods})
    reconciler = Reconciler(api, Settings(metrics_port=0), cache=cache)
    for _ in range(2):
        asyncio.run(reconciler.reconcile(NS, name, logging.getLogger("test")))
    return api, reconciler


def test_the_summary_rides_on_the_status_patches_the_operator_makes_anyway() -> None:
    plain, _ = run_task("plain", timed=False)
    timed, _ = run_task("timed", timed=True)
    assert timed.calls == plain.calls  # the same API calls, the same number of status patches
    assert timed.calls.count("status") == 1
    summary = TimingSummary.model_validate(timed.task["status"]["timing"])
    assert summary.items == 3
    assert summary.slowest_worker == "timed-2-0"
    assert summary.slowest_worker_seconds_per_item == pytest.approx(0.8)
    assert summary.p50_seconds == pytest.approx(0.1, rel=0.1)
    assert summary.p50_seconds is not None and summary.p95_seconds is not None
    assert summary.p95_seconds >= summary.p50_seconds
    assert summary.items_per_second is not None and summary.items_per_second > 0
    assert plain.task["status"].get("timing") is None  # nothing reported, nothing summarised
    assert "slowest worker timed-2-0" in summary.describe()


def test_the_summary_stays_small_at_any_size() -> None:
    totals = taskstats.Totals()
    for n in range(20_000):  # 20,000 slices from 20,000 pods, one of them slow
        per_item = 5.0 if n == 12_345 else 0.01 * (1 + n % 7)
        totals.add(timing(f"pod-{n}", n * 50, 50, per_item, 1000.0 + n))
    assert len(totals.workers) <= taskstats.MAX_WORKERS
    assert len(totals.buckets) < 40
    summary = totals.summary()
    assert summary.slowest_worker == "pod-12345"
    assert summary.items == 1_000_000
    assert len(json.dumps(summary.to_wire())) < 300


def test_a_reconcile_counts_items_pods_and_durations_once() -> None:
    before = {
        "ok": value("kubemap_items_succeeded_total", namespace=NS, pool=""),
        "items": value("kubemap_item_duration_seconds_count", namespace=NS, pool=""),
        "chunks": value("kubemap_chunk_duration_seconds_count", namespace=NS, pool=""),
        "started": value("kubemap_pod_start_latency_seconds_count", namespace=NS),
        "deleted": value("kubemap_pods_deleted_total", namespace=NS),
    }
    run_task("counted", timed=True)  # reconciled twice: each pod counted once
    assert value("kubemap_items_succeeded_total", namespace=NS, pool="") - before["ok"] == 3
    assert (
        value("kubemap_item_duration_seconds_count", namespace=NS, pool="") - before["items"] == 3
    )
    assert (
        value("kubemap_chunk_duration_seconds_count", namespace=NS, pool="") - before["chunks"] == 3
    )
    assert value("kubemap_pod_start_latency_seconds_count", namespace=NS) - before["started"] == 3
    assert value("kubemap_pod_start_latency_seconds_sum", namespace=NS) >= 9.0
    assert value("kubemap_pods_deleted_total", namespace=NS) - before["deleted"] == 3
    assert value("kubemap_tasks", namespace=NS, pool="", phase="Succeeded") >= 1


def pool_spec(total: int, **kw: Any) -> MapTaskSpec:
    return MapTaskSpec(
        mode=Mode.FUNCTION, count=total, store=StoreRef(url="s3://b/p"), pool="warm", **kw
    )


def test_the_dispatcher_counts_leases_items_and_expiries() -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    pool, key = (NS, "warm"), (NS, "pt")
    d = Dispatcher(lease_seconds=5, clock=lambda: now[0], limits=Limits(backoff_base_seconds=0))
    d.pool(pool).runnable = 2  # two workers: two chunks
    d.sync(key, "uid", pool_spec(100, parallelism=2), MapTaskStatus(), "s3://b/p/pt", None, 1)
    assert value("kubemap_dispatcher_queue_depth", namespace=NS, pool="warm") == 100
    labels = {"namespace": NS, "pool": "warm"}
    granted = value("kubemap_lease_grant_latency_seconds_count", **labels)
    expired = value("kubemap_leases_expired_total", **labels)
    retried = value("kubemap_items_retried_total", **labels, failure_class="infra")
    ok = value("kubemap_items_succeeded_total", **labels)
    first = asyncio.run(d.lease(pool, "w0", "3.11", 0))
    second = asyncio.run(d.lease(pool, "w1", "3.11", 0))
    assert first is not None and second is not None
    span = IndexRanges.span(first.start, first.start + first.count)
    record = timing("w0", first.start, first.count, 0.2, 1000.0)
    report = WorkerReport(span, IndexRanges(), timings=(record.encode().decode(),))
    assert d.report(pool, first.lease_id, "ok", report)
    now[0] += timedelta(seconds=10)  # w1 went silent: its lease expires
    d.sync(key, "uid", pool_spec(100, parallelism=2), MapTaskStatus(), "s3://b/p/pt", None, 1)
    assert value("kubemap_lease_grant_latency_seconds_count", **labels) - granted == 2
    assert value("kubemap_leases_expired_total", **labels) - expired == 1
    assert value("kubemap_items_succeeded_total", **labels) - ok == first.count
    assert value("kubemap_items_retried_total", **labels, failure_class="infra") - retried == (
        second.count
    )
    assert value("kubemap_dispatcher_queue_depth", **labels) == 100 - first.count
    summary = taskstats.TIMINGS.summary(key)
    assert summary is not None and summary.slowest_worker == "w0" and summary.items == first.count


def test_user_failures_are_counted_by_class_final_or_retried() -> None:
    labels = {"namespace": NS, "pool": "warm2", "failure_class": "user"}
    failed, retried = (
        value("kubemap_items_failed_total", **labels),
        value("kubemap_items_retried_total", **labels),
    )
    pool, key = (NS, "warm2"), (NS, "pu")
    d = Dispatcher(
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC), limits=Limits(backoff_base_seconds=0)
    )
    spec = pool_spec(4, parallelism=1, backoff_limit_per_index=1, max_failed_indexes=4)
    d.sync(
        key,
        "uid",
        spec.model_copy(update={"pool": "warm2"}),
        MapTaskStatus(),
        "s3://b/p/pu",
        None,
        1,
    )
    for _ in range(2):  # the first failure is retried, the second is final
        got = asyncio.run(d.lease(pool, "w0", "3.11", 0))
        assert got is not None
        span = IndexRanges.span(got.start, got.start + got.count)
        assert d.report(pool, got.lease_id, "user", WorkerReport(IndexRanges(), span))
    assert value("kubemap_items_retried_total", **labels) - retried == 4
    assert value("kubemap_items_failed_total", **labels) - failed == 4


def test_api_requests_and_429s_are_counted_by_verb_resource_and_code() -> None:
    class Client:
        def __init__(self) -> None:
            self.answers = [200, 429]

        def request(self, method: str, url: str, **kw: Any) -> Any:
            code = self.answers.pop(0)
            if code >= 400:
                raise ApiException(status=code)
            return type("Response", (), {"status": code})()

    api = counted(Client())  # type: ignore[arg-type,unused-ignore]
    url = "https://k:6443/api/v1/namespaces/pods/pods"  # a namespace named "pods" too
    ok = value("kubemap_api_requests_total", verb="POST", resource="pods", code="200")
    throttled = value("kubemap_api_throttled_total", resource="pods")
    api.request("POST", url)
    with pytest.raises(ApiException):
        api.request("POST", url)
    assert value("kubemap_api_requests_total", verb="POST", resource="pods", code="200") - ok == 1
    assert value("kubemap_api_throttled_total", resource="pods") - throttled == 1
    assert metrics.resource_of("/apis/kubemap.io/v1alpha1/namespaces/a/maptasks/t/status") == (
        "maptasks"
    )
    assert metrics.resource_of("/apis/coordination.k8s.io/v1/leases") == "other"


def test_a_store_error_a_worker_reported_is_counted_by_kind() -> None:
    from kubemap.core.policy import Cause

    labels = {"namespace": NS, "pool": "warm3", "kind": "store"}
    before = value("kubemap_store_errors_total", **labels)
    pool, key = (NS, "warm3"), (NS, "ps")
    d = Dispatcher(clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    spec = pool_spec(2).model_copy(update={"pool": "warm3"})
    d.sync(key, "uid", spec, MapTaskStatus(), "s3://b/p/ps", None, 1)
    got = asyncio.run(d.lease(pool, "w0", "3.11", 0))
    assert got is not None
    report = WorkerReport(cause=Cause("store", "SlowDown", "please reduce your request rate"))
    assert d.report(pool, got.lease_id, "infra", report)
    assert value("kubemap_store_errors_total", **labels) - before == 1


def test_the_termination_line_carries_the_timing_record_within_its_limit() -> None:
    small = timing("p-0-0", 0, 10, 0.05, 1000.0)
    line = summary_line(SliceOutcome(succeeded=IndexRanges.span(0, 10), timings=(small,)))
    report = Report.parse(line)
    assert report is not None and len(report.timings) == 1
    assert SliceTiming.decode(report.timings[0].encode()) == SliceTiming.decode(small.encode())
    huge = SliceTiming(**{**small.__dict__, "worker": "w" * 5000})
    line = summary_line(SliceOutcome(succeeded=IndexRanges.span(0, 10), timings=(huge,)))
    assert len(line.encode()) <= SUMMARY_LIMIT
    parsed = Report.parse(line)
    assert parsed is not None and parsed.timings == () and len(parsed.succeeded) == 10


def test_every_series_has_bounded_labels_only() -> None:
    run_task("labels", timed=True)
    scrape = generate_latest(metrics.REGISTRY).decode()
    names = set()
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            names.add(sample.name)
            assert set(sample.labels) <= promqlcheck.BOUNDED_LABELS, sample
            assert "labels" not in sample.labels.values()  # never a task's name
    for wanted in (
        "kubemap_items_succeeded_total", "kubemap_item_duration_seconds_bucket",
        "kubemap_chunk_duration_seconds_bucket", "kubemap_tasks", "kubemap_pods_deleted_total",
        "kubemap_pod_start_latency_seconds_bucket",
    ):  # fmt: skip
        assert wanted in names


def test_a_pods_user_failure_is_counted_once_as_failed_for_good() -> None:
    labels = {"namespace": NS, "pool": "", "failure_class": "user"}
    failed = value("kubemap_items_failed_total", **labels)
    retried = value("kubemap_items_retried_total", **labels)
    ok = value("kubemap_items_succeeded_total", namespace=NS, pool="")
    task = {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": "bad", "namespace": NS, "uid": "uid-t", "generation": 1,
                     "resourceVersion": "1"},
        "spec": {"mode": "Container", "template": {"image": "busybox"}, "count": 2,
                 "parallelism": 2, "maxFailedIndexes": 1},
    }  # fmt: skip
    good = SliceOutcome(succeeded=IndexRanges.span(0, 1))
    bad = SliceOutcome(failed=IndexRanges.span(1, 2))
    pods = [
        pod("bad-0-0", 0, 1, summary_line(good)),
        pod("bad-1-0", 1, 1, summary_line(bad), exit_code=3),
    ]
    api = FakeApi(task)
    cache = WatchCache({(NS, "bad"): [api.task]}, {(NS, task_label("bad")): pods})
    reconciler = Reconciler(api, Settings(metrics_port=0), cache=cache)
    for _ in range(3):
        asyncio.run(reconciler.reconcile(NS, "bad", logging.getLogger("test")))
    assert api.task["status"]["failedIndexes"] == "1"
    assert value("kubemap_items_failed_total", **labels) - failed == 1
    assert value("kubemap_items_retried_total", **labels) - retried == 0
    assert value("kubemap_items_succeeded_total", namespace=NS, pool="") - ok == 1


def test_items_of_a_task_that_a_failure_ended_are_not_counted_as_retried() -> None:
    from kubemap.core.policy import Cause

    labels = {"namespace": NS, "pool": "warm4"}
    retried = value("kubemap_items_retried_total", **labels, failure_class="infra")
    tampered = value("kubemap_store_errors_total", **labels, kind="tampered")
    pool, key = (NS, "warm4"), (NS, "pz")
    d = Dispatcher(clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    spec = pool_spec(3).model_copy(update={"pool": "warm4"})
    d.sync(key, "uid", spec, MapTaskStatus(), "s3://b/p/pz", None, 1)
    got = asyncio.run(d.lease(pool, "w0", "3.11", 0))
    assert got is not None
    report = WorkerReport(cause=Cause("tampered", "BadSignature", "fn.pkl was changed"))
    assert d.report(pool, got.lease_id, "infra", report)
    status, _, _ = d.sync(key, "uid", spec, MapTaskStatus(), "s3://b/p/pz", None, 1)
    assert status is not None and status.phase.finished  # the task stopped: nothing reruns
    assert value("kubemap_items_retried_total", **labels, failure_class="infra") == retried
    assert value("kubemap_store_errors_total", **labels, kind="tampered") - tampered == 1


def test_a_deleted_pools_gauges_go_with_it() -> None:
    metrics.observe_pool_workers(NS, "gone", wanted=2, ready=2, busy=1, idle=1)
    metrics.QUEUE_DEPTH.labels(NS, "gone").set(5)
    metrics.observe_phase(NS, "t-gone", Phase.SUCCEEDED, "gone")
    metrics.observe_phase(NS, "t-gone", None)
    metrics.forget_pool(NS, "gone")
    scrape = generate_latest(metrics.REGISTRY).decode()
    assert 'pool="gone"' not in scrape
