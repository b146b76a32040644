"""Backup pods for stragglers (pod mode), table by table: observed pods in, plan out. Counted:
pods to create (backups), pods to delete (losers), the status's speculated/won/wasted, and
that each slice is judged once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kubemap.core.speculation import Pace
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Phase
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.builder import TaskRef, build_pod
from kubemap_operator.tasks.observe import ObservedPod, PodState, observe_pod
from kubemap_operator.tasks.planner import PodRequest, plan
from kubemap_operator.tasks.speculation import observe_pace

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def spec(**kw: Any) -> MapTaskSpec:
    base: dict[str, Any] = {
        "mode": "Function",
        "count": 10,
        "parallelism": 10,
        "itemsPerPod": 1,
        "store": {"url": "s3://b/p"},
        "speculation": {"minSeconds": 1.0, "budget": 0.5},
    }
    base.update(kw)
    return MapTaskSpec.model_validate(base)


def pod(
    start: int,
    *,
    age: float,
    state: PodState = PodState.ACTIVE,
    backup: bool = False,
    attempt: int = 0,
    deleting: bool = False,
) -> ObservedPod:
    return ObservedPod(
        name=f"t-{start}-{attempt}" + ("s" if backup else ""),
        start=start,
        count=1,
        attempt=attempt,
        failures=0,
        infra_failures=0,
        state=state,
        exit_code=None if state is PodState.ACTIVE else (0 if state is PodState.SUCCEEDED else 3),
        is_pod=True,
        created_at=NOW - timedelta(seconds=age),
        finished_at=None if state is PodState.ACTIVE else NOW - timedelta(seconds=0.5),
        backup=backup,
        deleting=deleting,
    )


def running(succeeded: str, **kw: Any) -> MapTaskStatus:
    return MapTaskStatus(
        phase=Phase.RUNNING,
        total=10,
        succeeded_indexes=succeeded,
        start_time="2026-01-01T11:59:00Z",
        **kw,
    )


def test_a_straggler_gets_a_backup_pod_once_nothing_waits() -> None:
    """9 of 10 done in ~1 s each; pod 9 has run 30 s: one backup, same slice and attempt."""
    got = plan(spec(), running("0-8"), [pod(9, age=30)], NOW, seconds_per_item=1.0)
    assert got.create == (PodRequest(9, 1, 0, 0, 0, backup=True),)
    assert not got.delete
    # not before its time: 1.5 s is under 2 x 1 s
    assert not plan(spec(), running("0-8"), [pod(9, age=1.5)], NOW, seconds_per_item=1.0).create
    # nothing measured yet, or speculation off: none
    assert not plan(spec(), running("0-8"), [pod(9, age=30)], NOW).create
    off = spec(speculation={"enabled": False})
    assert not plan(off, running("0-8"), [pod(9, age=30)], NOW, seconds_per_item=1.0).create
    # a container task's outputs are not write-once: never copied
    container = spec(mode="Container", store=None, template={"image": "busybox"})
    assert not plan(container, running("0-8"), [pod(9, age=30)], NOW, seconds_per_item=1.0).create


def test_no_backup_while_work_waits_or_past_the_budget() -> None:
    # index 8 has no pod yet: it is started, no backup
    got = plan(spec(), running("0-7"), [pod(9, age=30)], NOW, seconds_per_item=1.0)
    assert [r.start for r in got.create] == [8] and not any(r.backup for r in got.create)
    # budget 10 % of 10 items = 1 backup, spent already
    tight = spec(speculation={"minSeconds": 1.0, "budget": 0.1})
    spent = running("0-8", speculated=1)
    assert not plan(tight, spent, [pod(9, age=30)], NOW, seconds_per_item=1.0).create
    # the slice has its backup already: no second one
    pods = [pod(9, age=30), pod(9, age=20, backup=True)]
    assert not plan(spec(), running("0-8", speculated=1), pods, NOW, seconds_per_item=1.0).create


def test_the_backup_wins_the_original_is_deleted_and_the_slice_counted_once() -> None:
    pods = [pod(9, age=40), pod(9, age=3, backup=True, state=PodState.SUCCEEDED)]
    got = plan(spec(), running("0-8", speculated=1), pods, NOW, seconds_per_item=1.0)
    assert got.status.phase is Phase.SUCCEEDED and got.status.succeeded == 10
    assert "t-9-0" in got.delete
    assert (got.status.speculation_won, got.status.speculation_wasted) == (1, 1)
    # the next look sees the loser going: nothing counted twice
    again = [pod(9, age=41, deleting=True)]
    later = plan(spec(), got.status, again, NOW, seconds_per_item=1.0)
    assert (later.status.speculation_won, later.status.speculation_wasted) == (1, 1)


def test_the_original_wins_and_the_backup_is_deleted() -> None:
    pods = [pod(9, age=40, state=PodState.SUCCEEDED), pod(9, age=3, backup=True)]
    got = plan(spec(), running("0-8", speculated=1), pods, NOW, seconds_per_item=1.0)
    assert got.status.succeeded == 10 and "t-9-0s" in got.delete
    assert (got.status.speculation_won, got.status.speculation_wasted) == (0, 1)


def test_a_copy_failing_while_its_twin_runs_is_set_aside_not_retried() -> None:
    pods = [pod(9, age=40), pod(9, age=3, backup=True, state=PodState.FAILED)]
    got = plan(spec(), running("0-8", speculated=1), pods, NOW, seconds_per_item=1.0)
    assert got.status.phase is Phase.RUNNING and got.status.failed == 0
    assert "t-9-0s" in got.delete
    assert not got.create, "a retry pod (or another backup) while the original still runs"


def test_backup_pods_are_named_and_marked_and_observed_back() -> None:
    manifest = build_pod(
        TaskRef("t", "ns", "u"),
        spec(),
        PodRequest(9, 1, 2, 1, 0, backup=True),
        Settings(worker_image="kubemap:test"),
    )
    assert manifest["metadata"]["name"] == "t-9-2s"
    manifest["metadata"]["creationTimestamp"] = "2026-01-01T11:59:00Z"
    seen = observe_pod(manifest, NOW)
    assert seen is not None and seen.backup and (seen.start, seen.attempt) == (9, 2)


def test_the_pace_counts_each_succeeded_pod_once() -> None:
    pace, seen = Pace(), set[str]()
    done = [pod(i, age=2.5, state=PodState.SUCCEEDED) for i in range(3)]
    observe_pace(pace, seen, done)
    observe_pace(pace, seen, done)
    assert len(pace.samples) == 3 and pace.seconds_per_item == 2.0
