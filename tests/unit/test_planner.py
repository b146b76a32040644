"""The reconcile core, table by table: observed state in, plan out."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubemap.core.ranges import IndexRanges
from kubemap.core.status import run_status
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Phase
from kubemap_operator.tasks.observe import ObservedPod, PodState, WorkerReport
from kubemap_operator.tasks.planner import Limits, PodRequest, plan

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def spec(**kw: Any) -> MapTaskSpec:
    base: dict[str, Any] = {
        "mode": "Container",
        "count": 10,
        "parallelism": 3,
        "template": {"image": "busybox"},
    }
    base.update(kw)
    return MapTaskSpec.model_validate(base)


def pod(
    start: int,
    count: int = 1,
    *,
    attempt: int = 0,
    state: PodState = PodState.ACTIVE,
    exit_code: int | None = None,
    failures: int = 0,
    infra: int = 0,
    report: tuple[str, str] | None = None,
    deleting: bool = False,
    infra_reason: str | None = None,
    finished: datetime | None = None,
    finalizer: bool = True,
) -> ObservedPod:
    return ObservedPod(
        name=f"t-{start}-{attempt}",
        start=start,
        count=count,
        attempt=attempt,
        failures=failures,
        infra_failures=infra,
        state=state,
        exit_code=exit_code,
        infra_reason=infra_reason,
        report=WorkerReport(IndexRanges.parse(report[0]), IndexRanges.parse(report[1]))
        if report
        else None,
        deleting=deleting,
        has_finalizer=finalizer,
        is_pod=True,
        finished_at=finished
        or (NOW - timedelta(seconds=1) if state is not PodState.ACTIVE else None),
    )


def ok(start: int, count: int = 1, **kw: Any) -> ObservedPod:
    return pod(start, count, state=PodState.SUCCEEDED, exit_code=0, **kw)


def bad(start: int, count: int = 1, code: int = 3, **kw: Any) -> ObservedPod:
    return pod(start, count, state=PodState.FAILED, exit_code=code, **kw)


def running(succeeded: str = "", failed: str = "", **kw: Any) -> MapTaskStatus:
    return MapTaskStatus(
        phase=Phase.RUNNING,
        succeeded_indexes=succeeded,
        failed_indexes=failed,
        start_time="2026-01-01T11:59:00Z",
        **kw,
    )


STARTS = [
    # (name, spec kwargs, status, pods, expected creates)
    ("fresh task starts up to parallelism", {}, MapTaskStatus(), [], [(0, 1), (1, 1), (2, 1)]),
    (
        "chunks of itemsPerPod, last one short",
        {"items_per_pod": 3, "parallelism": 10},
        MapTaskStatus(),
        [],
        [(0, 3), (3, 3), (6, 3), (9, 1)],
    ),
    ("cap reached: nothing new", {}, running(), [pod(0), pod(1), pod(2)], []),
    ("one slot free", {}, running(), [pod(0), pod(1)], [(2, 1)]),
    ("lowered parallelism never deletes", {"parallelism": 1}, running(), [pod(0), pod(1)], []),
    ("recorded indices are skipped", {}, running(succeeded="0-4"), [], [(5, 1), (6, 1), (7, 1)]),
    ("holes are filled first", {}, running(succeeded="0-2,5-9"), [], [(3, 1), (4, 1)]),
    ("success frees a slot in the same round", {}, running(), [ok(0), pod(1), pod(2)], [(3, 1)]),
    (
        "deleting pods still hold their slot",
        {},
        running(),
        [pod(0, deleting=True), pod(1), pod(2)],
        [],
    ),
]


@pytest.mark.parametrize(
    ("name", "kw", "status", "pods", "creates"), STARTS, ids=[s[0] for s in STARTS]
)
def test_starts(
    name: str,
    kw: dict[str, Any],
    status: MapTaskStatus,
    pods: list[ObservedPod],
    creates: list[tuple[int, int]],
) -> None:
    result = plan(spec(**kw), status, pods, NOW)
    assert [(r.start, r.count) for r in result.create] == creates
    active = sum(p.state is PodState.ACTIVE for p in pods)
    assert active + len(result.create) <= max(spec(**kw).parallelism, active)
    assert result.status.phase is Phase.RUNNING


def test_success_recorded_then_pod_deleted_and_replay_counts_once() -> None:
    first = plan(spec(), running(), [ok(0), ok(1, finalizer=True), pod(2)], NOW)
    assert first.status.succeeded_indexes == "0-1" and first.status.succeeded == 2
    assert set(first.delete) == {"t-0-0", "t-1-0"}
    # The operator died after writing the status but before deleting: the replay changes nothing.
    again = plan(spec(), first.status, [ok(0), ok(1), pod(2)], NOW)
    assert again.status.succeeded == 2 and again.status.succeeded_indexes == "0-1"
    assert set(again.delete) == {"t-0-0", "t-1-0"}


def test_all_done_succeeds_with_event() -> None:
    result = plan(spec(count=3), running(succeeded="0-1"), [ok(2)], NOW)
    assert result.status.phase is Phase.SUCCEEDED
    assert result.status.completion_time == "2026-01-01T12:00:00Z"
    assert result.status.conditions[-1].type == "Complete"
    assert [e.reason for e in result.events] == ["Succeeded"]
    assert result.delete == ("t-2-0",)


def test_empty_task_succeeds_at_once() -> None:
    result = plan(spec(count=0), MapTaskStatus(), [], NOW)
    assert result.status.phase is Phase.SUCCEEDED and not result.create


def test_user_failure_with_retries_left_waits_for_backoff() -> None:
    s = spec(backoff_limit_per_index=2)
    failed = bad(4, finished=NOW - timedelta(seconds=3))
    result = plan(
        s, running(), [failed, pod(0), pod(1)], NOW, limits=Limits(backoff_base_seconds=10)
    )
    assert result.status.failed_indexes == "" and result.create == (PodRequest(2, 1),)  # not 4 yet
    assert result.requeue_after == pytest.approx(7.0)
    assert (
        "t-4-0" not in result.release and "t-4-0" not in result.delete
    )  # the record of the failure
    later = plan(s, running(), [failed, pod(0), pod(1), pod(2)], NOW + timedelta(seconds=8))
    assert later.create == ()  # due, but no free slot
    later = plan(s, running(), [failed, pod(0), pod(1)], NOW + timedelta(seconds=8))
    assert later.create == (PodRequest(4, 1, attempt=1, failures=1),)  # retries go first


def test_backoff_doubles_per_failure() -> None:
    s = spec(backoff_limit_per_index=5)
    failed = bad(4, attempt=2, failures=2, finished=NOW)
    result = plan(s, running(), [failed], NOW, limits=Limits(backoff_base_seconds=1))
    assert result.requeue_after == pytest.approx(4.0)  # third failure: 1, 2, 4


def test_retry_exhausted_fails_index_and_task() -> None:
    s = spec(backoff_limit_per_index=1)
    result = plan(s, running(), [bad(4, attempt=1, failures=1), pod(0)], NOW)
    assert result.status.failed_indexes == "4" and result.status.failed == 1
    assert result.status.phase is Phase.FAILED
    assert "t-0-0" in result.delete  # a failed task stops its pods
    assert {e.reason for e in result.events} == {"IndexFailed", "Failed"}
    assert "after 2 attempt(s)" in result.events[0].message


def test_min_success_ratio_tolerates_failures() -> None:
    s = spec(count=4, min_success_ratio=0.5)
    step = plan(s, running(succeeded="0-1"), [bad(2)], NOW)
    assert step.status.phase is Phase.RUNNING and step.status.failed_indexes == "2"
    assert step.release == ("t-2-0",)
    assert step.create == (PodRequest(3, 1),)
    done = plan(s, step.status, [bad(2), ok(3)], NOW)
    assert done.status.phase is Phase.SUCCEEDED
    assert "1 failures tolerated" in (done.status.message or "")


def test_max_failed_indexes_fails_early() -> None:
    s = spec(count=100, max_failed_indexes=1, min_success_ratio=0.0)
    result = plan(s, running(failed="7"), [bad(9)], NOW)
    assert result.status.phase is Phase.FAILED and result.status.failed == 2


def test_chunk_report_splits_success_and_retry() -> None:
    s = spec(items_per_pod=5, backoff_limit_per_index=1)
    chunk = bad(0, 5, report=("0-2,4", "3"))
    result = plan(s, running(), [chunk], NOW + timedelta(seconds=60))
    assert result.status.succeeded_indexes == "0-2,4"
    assert result.create[0] == PodRequest(3, 1, attempt=1, failures=1)


def test_retries_group_contiguous_failures_capped_at_items_per_pod() -> None:
    s = spec(items_per_pod=2, count=6, backoff_limit_per_index=1, parallelism=10)
    chunk = bad(0, 6, report=("", "0-4"))
    result = plan(s, running(succeeded="5"), [chunk], NOW + timedelta(seconds=60))
    assert [(r.start, r.count) for r in result.create] == [(0, 2), (2, 2), (4, 1)]
    assert all(r.attempt == 1 for r in result.create)


def test_latest_attempt_wins_and_old_failures_are_released() -> None:
    s = spec(count=2, backoff_limit_per_index=1)
    old = bad(0, attempt=0)
    new = ok(0, attempt=1, failures=1)
    result = plan(s, running(succeeded="1"), [old, new], NOW)
    assert result.status.phase is Phase.SUCCEEDED and result.status.succeeded == 2
    assert result.status.failed_indexes == ""


INFRA = [
    ("exit code 4", bad(1, code=4)),
    ("killed without exit code", bad(1, code=None)),  # type: ignore[arg-type]
    ("evicted", pod(1, state=PodState.FAILED, infra_reason="pod ended by the platform (Evicted)")),
    (
        "deleted from outside",
        pod(
            1,
            state=PodState.FAILED,
            exit_code=143,
            deleting=True,
            infra_reason="pod deleted before it finished",
        ),
    ),
    ("failed phase with exit 0", pod(1, state=PodState.FAILED, exit_code=0)),
]


@pytest.mark.parametrize(("name", "lost"), INFRA, ids=[i[0] for i in INFRA])
def test_infrastructure_failures_are_replaced_without_spending_retries(
    name: str, lost: ObservedPod
) -> None:
    result = plan(spec(), running(succeeded="0"), [lost], NOW)
    assert result.create[0] == PodRequest(1, 1, attempt=1, failures=0, infra_failures=1)
    assert result.status.failed_indexes == ""
    # Its finalizer stays until the replacement exists; then it is released.
    assert lost.name not in result.release
    after = plan(spec(), result.status, [lost, pod(1, attempt=1, infra=1)], NOW)
    assert lost.name in (*after.release, *after.delete) or not lost.has_finalizer


def test_infrastructure_failures_are_bounded() -> None:
    result = plan(spec(count=2), running(succeeded="0"), [bad(1, code=4, attempt=5, infra=5)], NOW)
    assert result.status.failed_indexes == "1" and result.status.phase is Phase.FAILED


def test_usage_error_fails_the_task() -> None:
    result = plan(spec(backoff_limit_per_index=5), running(), [bad(0, code=5), pod(1)], NOW)
    assert result.status.phase is Phase.FAILED
    assert result.status.conditions[-1].reason == "UsageError"
    assert "pod t-0-0, index 0, attempt 1: exit code 5 (usage error)" in (
        result.status.message or ""
    )


def test_suspend_cancels_and_deletes_active_pods() -> None:
    result = plan(spec(suspend=True), running(), [pod(0), pod(1), ok(2)], NOW)
    assert result.status.phase is Phase.CANCELLED
    assert set(result.delete) == {"t-0-0", "t-1-0", "t-2-0"} and not result.create


def test_active_deadline() -> None:
    early = plan(spec(active_deadline_seconds=300), running(), [pod(0)], NOW)
    assert early.status.phase is Phase.RUNNING and early.requeue_after == pytest.approx(
        240.0
    )  # started 60 s ago
    result = plan(spec(active_deadline_seconds=30), running(), [pod(0)], NOW)
    assert (
        result.status.phase is Phase.FAILED
        and result.status.conditions[-1].reason == "DeadlineExceeded"
    )


@pytest.mark.parametrize(
    ("ttl", "age", "deleted", "requeue"),
    [(60, 10, False, 50.0), (60, 61, True, None), (None, 9999, False, None)],
)
def test_ttl_after_finished(
    ttl: int | None, age: int, deleted: bool, requeue: float | None
) -> None:
    done = MapTaskStatus(phase=Phase.SUCCEEDED, completion_time="2026-01-01T12:00:00Z")
    result = plan(spec(ttl_seconds_after_finished=ttl), done, [], NOW + timedelta(seconds=age))
    assert result.delete_task is deleted and result.requeue_after == requeue


def test_finished_task_lets_go_of_every_pod() -> None:
    done = MapTaskStatus(phase=Phase.CANCELLED, completion_time="2026-01-01T12:00:00Z")
    result = plan(spec(), done, [pod(0, deleting=True), bad(1, finalizer=True)], NOW)
    assert set(result.release) == {"t-0-0", "t-1-0"} and result.delete == ()


def test_failed_pods_kept_up_to_bound_newest_first() -> None:
    s = spec(count=40, min_success_ratio=0.0, parallelism=1)
    pods = [bad(i, finished=NOW - timedelta(seconds=100 - i)) for i in range(25)]
    result = plan(s, running(failed="0-24"), pods, NOW, limits=Limits(failed_pods_kept=20))
    assert set(result.delete) == {f"t-{i}-0" for i in range(5)}


def test_success_is_deferred_when_ranges_would_overflow() -> None:
    s = spec(count=10, parallelism=10)
    result = plan(
        s,
        running(succeeded="0,2"),
        [ok(4), ok(6), pod(1), pod(3), pod(5)],
        NOW,
        limits=Limits(max_succeeded_ranges=3),
    )
    assert result.status.succeeded_indexes == "0,2,4"
    assert "t-6-0" not in result.delete and "t-6-0" not in result.release
    merged = plan(
        s, result.status, [ok(1), ok(3), ok(5), ok(6)], NOW, limits=Limits(max_succeeded_ranges=3)
    )
    assert merged.status.succeeded_indexes == "0-6"


def test_scattered_failures_beyond_the_bound_fail_the_task() -> None:
    s = spec(count=100, min_success_ratio=0.0, parallelism=5)
    result = plan(
        s, running(failed="0,2,4"), [bad(6), bad(8)], NOW, limits=Limits(max_failed_ranges=4)
    )
    assert result.status.phase is Phase.FAILED
    assert result.status.conditions[-1].reason == "TooManyFailedRanges"
    assert result.status.failed_indexes == "0,2,4"


def test_a_stopped_task_counts_every_index_whose_last_attempt_failed_as_failed() -> None:
    """Issue 18 item 16, pod mode with --retries 1: indices 3, 8 and 14 always fail. Index 3
    fails its second attempt (fail-fast: the task stops) while 8 waits for its retry and 14
    runs it. Each of the three has an error record and no result, so failures() lists 3:
    the status said "1 failed, 2 not run"."""
    others = [ok(i) for i in range(20) if i not in (3, 8, 14)]
    pods = [
        *others,
        bad(3, attempt=1, failures=1),
        bad(8),  # its retry is due in 10 s
        bad(14),
        pod(14, attempt=1, failures=1),  # the retry, running
    ]
    result = plan(spec(count=20, backoff_limit_per_index=1), running(), pods, NOW)
    status = result.status
    assert status.phase is Phase.FAILED
    assert (status.succeeded, status.failed, status.not_run) == (17, 3, 0), status
    assert status.failed_indexes == "3,8,14"
    assert "17 succeeded, 3 failed, 0 not run" in (status.message or "")
    assert status.succeeded + status.failed + status.not_run == status.total


def test_counts_add_up_while_pods_run_slices_of_several_indices() -> None:
    """`active` counts pods; notRun must leave out every index those pods run."""
    pods = [ok(0, 4), pod(4, 4), pod(8, 4)]
    result = plan(spec(count=20, items_per_pod=4), running(), pods, NOW)
    status = result.status
    assert (status.succeeded, status.failed, status.active, status.not_run) == (4, 0, 2, 8)
    seen = run_status(status_wire_of(status), total=20)
    assert (seen.succeeded, seen.failed, seen.active, seen.not_run) == (4, 0, 8, 8)


def status_wire_of(status: MapTaskStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, mode="json")


def test_a_lease_is_named_by_index_and_attempt_never_like_a_pod() -> None:
    """A warm pool's leases are named "17-0": messages said "(17-0, exit code 3)"."""
    lease = replace(bad(17, attempt=1, failures=1), name="17-1", is_pod=False)
    result = plan(spec(count=20), running(), [lease], NOW)
    message = result.status.message or ""
    assert "index 17, attempt 2: exit code 3" in message, message
    assert "17-1" not in message, message


def test_a_verdict_stops_running_pods_first_and_counts_what_they_finished() -> None:
    """Index 12 fails (fail-fast) while pods run 13-15. Concluding at once, the status said
    "12 succeeded" while pods that were about to end wrote 10 more results (seen on the
    test cluster: 12 recorded, 23 in S3). The task stops them first (keeping their
    finalizers), records what they finished, then concludes with those counts."""
    first = [ok(i) for i in range(12)] + [bad(12), pod(13), pod(14), pod(15)]
    stopping = plan(spec(count=20), running(), first, NOW, stop_first=True)
    status = stopping.status
    assert status.phase is Phase.RUNNING and stopping.create == ()
    assert sorted(stopping.stop) == ["t-13-0", "t-14-0", "t-15-0"]
    assert not set(stopping.stop) & set(stopping.release + stopping.delete)
    assert status.conditions[-1].type == "Stopping"
    assert status.conditions[-1].reason == "FailedIndexes"
    assert status.succeeded + status.failed + status.not_run + 3 == 20, status

    later = NOW + timedelta(seconds=2)
    ended = [
        *(ok(i) for i in range(12)),
        bad(12),
        ok(13, deleting=True),  # it had written its result when the stop came
        pod(14, state=PodState.FAILED, exit_code=4, deleting=True),  # SIGTERM: nothing written
        pod(15, state=PodState.FAILED, exit_code=4, deleting=True),
    ]
    final = plan(spec(count=20), status, ended, later, stop_first=True)
    status = final.status
    assert status.phase is Phase.FAILED
    assert (status.succeeded, status.failed, status.not_run) == (13, 1, 6), status
    assert "13 succeeded, 1 failed, 6 not run" in (status.message or "")
    assert "indices 12 failed" in (status.message or "")
    assert status.conditions[-1].type == "Failed"
    assert all(c.type != "Stopping" for c in status.conditions)
    assert final.stop == () and "t-13-0" in final.release + final.delete


def test_a_pod_that_never_ends_does_not_hold_a_stopping_task_for_ever() -> None:
    first = [ok(0), bad(1), pod(2)]
    stopping = plan(spec(count=5), running(), first, NOW, stop_first=True)
    assert stopping.status.phase is Phase.RUNNING and stopping.stop == ("t-2-0",)
    still = [ok(0), bad(1), pod(2, deleting=True)]
    soon = plan(spec(count=5), stopping.status, still, NOW + timedelta(seconds=5), stop_first=True)
    assert soon.status.phase is Phase.RUNNING and soon.stop == ()  # deleting: not asked again
    late = plan(spec(count=5), stopping.status, still, NOW + timedelta(seconds=61), stop_first=True)
    assert late.status.phase is Phase.FAILED
    assert (late.status.succeeded, late.status.failed, late.status.not_run) == (1, 1, 3)


def test_a_cancel_stops_pods_first_and_ends_cancelled() -> None:
    first = [ok(0), pod(1), pod(2)]
    stopping = plan(spec(count=3, suspend=True), running(), first, NOW, stop_first=True)
    assert stopping.status.phase is Phase.RUNNING and len(stopping.stop) == 2
    ended = [
        ok(0),
        ok(1, deleting=True),
        pod(2, state=PodState.FAILED, exit_code=4, deleting=True),
    ]
    final = plan(spec(count=3, suspend=True), stopping.status, ended, NOW, stop_first=True)
    assert final.status.phase is Phase.CANCELLED
    assert (final.status.succeeded, final.status.failed, final.status.not_run) == (2, 0, 1)
    assert final.status.conditions[-1].reason == "Suspended"
