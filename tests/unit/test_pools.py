"""Pure parts of warm pools: chunk sizing, SDK batching, the pool builders, tokens, the CRD,
and the dispatcher's use of plan() (a lease is an attempt), table by table, without I/O."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubemap.core.policy import ExitKind
from kubemap.core.ranges import IndexRanges
from kubemap.core.slicing import MAX_ITEMS_PER_POD, auto_items_per_pod, chunk_floor, guided_chunk
from kubemap.core.status import Phase
from kubemap.resources.crds import render_pool_crd
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Mode, StoreRef
from kubemap.resources.workerpool import WorkerPoolSpec
from kubemap_operator.pools.builder import deployment, token_secret
from kubemap_operator.pools.dispatch import FLUSH_SECONDS, Dispatcher
from kubemap_operator.pools.leases import (
    IllegalTransition,
    Lease,
    LeaseState,
)
from kubemap_operator.pools.tokens import pool_token, token_ok
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.observe import PodState, WorkerReport
from kubemap_operator.tasks.planner import Limits
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("remaining", "workers", "floor", "chunk"),
    [
        (10_000, 8, 1, 1250),  # remaining / workers
        (7, 8, 1, 1),  # the tail: single items
        (7, 8, 5, 5),  # ... unless the floor says a chunk must be worth more
        (3, 8, 5, 3),  # never more than what is left
        (0, 8, 1, 1),
        (10**9, 1, 1, 100_000),  # capped
    ],
)
def test_guided_chunks_shrink_towards_the_floor(
    remaining: int, workers: int, floor: int, chunk: int
) -> None:
    assert guided_chunk(remaining, workers, floor=floor) == chunk


def test_chunk_floor_is_a_quarter_second_of_measured_work() -> None:
    assert chunk_floor(None) == 1
    assert chunk_floor(0.01) == 25
    assert chunk_floor(1e-6) == 100_000
    assert chunk_floor(5.0) == 1


@pytest.mark.parametrize(
    ("total", "parallelism", "per_pod"),
    [
        (5, 10, 1),  # fewer items than slots: a pod each
        (100_000, 20, 2500),  # 40 pods, two per slot: not 100,000 pods
        (300, 20, 8),
        (10_000, 8, 625),
        (10**8, 10, MAX_ITEMS_PER_POD),
    ],
)
def test_the_sdk_batches_items_per_pod(total: int, parallelism: int, per_pod: int) -> None:
    assert auto_items_per_pod(total, parallelism) == per_pod
    pods = -(-total // per_pod)
    assert pods >= min(total, parallelism)  # never fewer pods than parallelism allows


def test_sdk_maptask_batches_unless_told_and_a_pool_task_leases() -> None:
    from kubemap.backends.kubernetes.backend import build_maptask
    from kubemap.resources.options import RunOptions

    auto = build_maptask("t", "s3://b/p/t", 10_000, RunOptions(parallelism=8))["spec"]
    assert auto["itemsPerPod"] == 625 and "pool" not in auto
    one = build_maptask("t", "s3://b/p/t", 10_000, RunOptions(items_per_pod=1))["spec"]
    assert one["itemsPerPod"] == 1
    # pool= is a Kubernetes option: the local default backend refuses it (issue 18, item 11)
    pooled_options = RunOptions(backend="kubernetes", pool="scorers")
    pooled = build_maptask("t", "s3://b/p/t", 10_000, pooled_options)["spec"]
    assert pooled["pool"] == "scorers" and pooled["itemsPerPod"] == 1


def test_pool_spec_rejects_min_above_replicas() -> None:
    with pytest.raises(ValidationError, match="minReplicas"):
        WorkerPoolSpec(replicas=1, min_replicas=2)


def test_pool_task_must_be_function_mode() -> None:
    with pytest.raises(ValidationError, match="pool is for function mode"):
        MapTaskSpec(mode=Mode.CONTAINER, count=1, pool="p", template={"image": "busybox"})


def test_worker_deployment_is_labelled_restricted_and_keeps_the_token_out_of_the_spec() -> None:
    settings = Settings(dispatcher_url="http://d:8787", s3_endpoint="http://s3:8333")
    dep = deployment("ns", "scorers", "uid-1", WorkerPoolSpec(replicas=3), 3, settings)
    pod = dep["spec"]["template"]
    assert dep["spec"]["replicas"] == 3
    assert pod["metadata"]["labels"]["kubemap.io/pool"] == "scorers"
    assert dep["spec"]["selector"] == {"matchLabels": {"kubemap.io/pool": "scorers"}}
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "kubemap.runtime.poolworker"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBEMAP_DISPATCHER_URL"]["value"] == "http://d:8787"
    assert env["KUBEMAP_POOL"]["value"] == "ns/scorers"
    assert env["KUBEMAP_POOL_TOKEN"] == {
        "name": "KUBEMAP_POOL_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "kubemap-pool-scorers", "key": "token"}},
    }
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    secret = token_secret("ns", "scorers", "uid-1", "abc")
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "WorkerPool"


def test_tokens_are_per_pool_and_per_uid() -> None:
    key = b"k"
    token = pool_token(key, "ns", "a", "uid-1")
    assert token_ok(key, "ns", "a", "uid-1", token)
    assert not token_ok(key, "ns", "b", "uid-1", token)  # another pool
    assert not token_ok(key, "ns", "a", "uid-2", token)  # the pool deleted and made again
    assert not token_ok(b"other", "ns", "a", "uid-1", token)


def test_the_pool_crd_file_matches_the_models() -> None:
    assert (REPO / "crds" / "workerpool.yaml").read_text() == render_pool_crd()
    chart_copy = REPO / "charts" / "kubemap" / "files" / "workerpool.crd.yaml"
    assert chart_copy.read_text() == render_pool_crd()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def spec(n: int, **kw: object) -> MapTaskSpec:
    return MapTaskSpec(mode=Mode.FUNCTION, count=n, store=StoreRef(url="s3://b/p"), pool="p", **kw)  # type: ignore[arg-type]


def lease_now(dispatcher: Dispatcher, worker: str = "w") -> dict[str, int | str]:
    grant = asyncio.run(dispatcher.lease(("ns", "p"), worker, "3.11", 0))
    assert grant is not None
    return {
        "id": grant.lease_id,
        "start": grant.start,
        "count": grant.count,
        "attempt": grant.attempt,
    }


def test_an_expired_lease_is_an_infrastructure_failure_and_spends_no_retry() -> None:
    clock = Clock()
    dispatcher = Dispatcher(lease_seconds=5, clock=clock, limits=Limits(backoff_base_seconds=0))
    key = ("ns", "t")
    dispatcher.sync(key, "u", spec(10), MapTaskStatus(), "s3://b/p/t", "3.11", 1)
    first = lease_now(dispatcher)
    assert (first["start"], first["count"], first["attempt"]) == (0, 10, 0)
    clock.advance(6)  # no heartbeat: the lease is lost, as a pod lost with its node
    again = lease_now(dispatcher, "w2")
    assert (again["start"], again["attempt"]) == (0, 1)
    lease = dispatcher.tasks[key].leases["0-1"]
    assert lease.failures == 0 and lease.infra_failures == 1  # no user retry spent
    done = IndexRanges.span(0, int(again["count"]))
    assert dispatcher.report(("ns", "p"), str(again["id"]), "ok", WorkerReport(done, IndexRanges()))
    while not dispatcher.tasks[key].status.phase.finished:
        more = lease_now(dispatcher, "w2")
        span = IndexRanges.span(int(more["start"]), int(more["start"]) + int(more["count"]))
        dispatcher.report(("ns", "p"), str(more["id"]), "ok", WorkerReport(span, IndexRanges()))
    assert dispatcher.tasks[key].status.phase is Phase.SUCCEEDED
    assert not dispatcher.report(("ns", "p"), str(first["id"]), "ok", None)  # the lost lease: gone


def test_status_reaches_the_api_at_most_once_per_flush_interval() -> None:
    clock = Clock()
    dispatcher = Dispatcher(clock=clock)
    key = ("ns", "t")
    dispatcher.seen(("ns", "p"), "w2", "3.11")  # two workers: the first chunk is half
    first, _, _ = dispatcher.sync(key, "u", spec(100), MapTaskStatus(), "s3://b/p/t", "3.11", 1)
    assert first is not None and first.phase is Phase.RUNNING
    grant = lease_now(dispatcher)
    count = int(grant["count"])
    dispatcher.report(
        ("ns", "p"), str(grant["id"]), "ok", WorkerReport(IndexRanges.span(0, count), IndexRanges())
    )
    status, _, wait = dispatcher.sync(key, "u", spec(100), first, "s3://b/p/t", "3.11", 1)
    assert status is None and wait is not None and wait <= FLUSH_SECONDS  # progress, not yet
    clock.advance(FLUSH_SECONDS)
    status, _, _ = dispatcher.sync(key, "u", spec(100), first, "s3://b/p/t", "3.11", 1)
    assert status is not None and status.succeeded == count


def test_a_worker_of_another_python_minor_never_gets_the_task_and_it_fails_clearly() -> None:
    dispatcher = Dispatcher()
    key = ("ns", "t")
    dispatcher.sync(key, "u", spec(5), MapTaskStatus(), "s3://b/p/t", "3.12", 1)
    assert asyncio.run(dispatcher.lease(("ns", "p"), "w", "3.11", 0)) is None
    status = dispatcher.tasks[key].status
    assert (
        status.phase is Phase.FAILED
        and "3.12" in (status.message or "")
        and "3.11" in (status.message or "")
    )


def test_a_reported_lease_is_the_attempt_the_core_judges_without_a_made_up_exit_code() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    lease = Lease(4, 3, 2, 1, 0, "w", expires=now, leased_at=now)
    assert lease.state is LeaseState.OFFERED
    lease.renew(now, 5)
    assert lease.state is LeaseState.LEASED
    report = WorkerReport(IndexRanges.span(4, 6), IndexRanges.span(6, 7))
    seen = lease.reported(ExitKind.USER, report, now, "")
    assert (seen.start, seen.count, seen.attempt, seen.failures) == (4, 3, 2, 1)
    assert seen.state is PodState.FAILED and seen.kind() is ExitKind.USER
    assert seen.exit_code is None and seen.infra_reason is None and seen.report == report
    assert lease.state is LeaseState.REPORTED
    for late in (lambda: lease.renew(now, 5), lease.revoke, lambda: lease.expire(now)):
        with pytest.raises(IllegalTransition):  # a final lease stays final
            late()


def test_a_cancel_takes_the_leases_back_and_its_verdict_counts_what_they_kept() -> None:
    """Issue 18 #14: the leases of a cancelled task are taken back at once (their heartbeat
    answers 'lost'); the verdict waits for the workers' reports of what finished (or
    STOP_WAIT_SECONDS), so the status counts every result that was written."""
    from kubemap_operator.pools.dispatch import STOP_WAIT_SECONDS

    clock = Clock()
    dispatcher = Dispatcher(clock=clock)
    key, pool = ("ns", "t"), ("ns", "p")
    dispatcher.seen(pool, "w2", "3.11")
    status, _, _ = dispatcher.sync(key, "u", spec(30), MapTaskStatus(), "s3://b/p/t", "3.11", 1)
    assert status is not None
    a, b = lease_now(dispatcher, "w"), lease_now(dispatcher, "w2")
    assert dispatcher.heartbeat(pool, "w", [str(a["id"])]) == []
    cancel = spec(30, suspend=True)
    held, _, _ = dispatcher.sync(key, "u", cancel, status, "s3://b/p/t", "3.11", 2)
    assert held is None and not dispatcher.tasks[key].status.phase.finished
    lost = dispatcher.heartbeat(pool, "w", [str(a["id"])]) + dispatcher.heartbeat(
        pool, "w2", [str(b["id"])]
    )
    assert lost == [a["id"], b["id"]]  # both taken back at once
    # no new chunk of the task is offered meanwhile:
    assert asyncio.run(dispatcher.lease(pool, "w3", "3.11", 0)) is None
    kept = IndexRanges.span(int(a["start"]), int(a["start"]) + 2)  # w stopped after 2 items
    assert dispatcher.report(pool, str(a["id"]), "infra", WorkerReport(kept, IndexRanges()))
    assert not dispatcher.tasks[key].status.phase.finished  # w2 has not answered yet
    clock.advance(STOP_WAIT_SECONDS)  # w2 is stuck or gone: the verdict waits no longer
    final, _, _ = dispatcher.sync(key, "u", cancel, status, "s3://b/p/t", "3.11", 2)
    assert final is not None and final.phase is Phase.CANCELLED
    assert (final.succeeded, final.succeeded_indexes) == (2, str(kept))
    assert not dispatcher.report(pool, str(b["id"]), "ok", None)  # too late: 410 Gone
