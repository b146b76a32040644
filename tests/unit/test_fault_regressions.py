"""Regressions found by the fault-injection suite (tests/chaos), pinned as pure unit tests."""

from __future__ import annotations

from datetime import timedelta

from kubemap_operator.tasks.observe import PodState, observe_pod
from kubemap_operator.tasks.planner import plan
from test_planner import NOW, bad, running, spec


def lost_container_pod() -> dict[str, object]:
    """What a kubelet (or the node emulator) reports after it restarted and could not find
    the container's process: terminated, ContainerStatusUnknown, exit code 137."""
    terminated = {
        "exitCode": 137,
        "reason": "ContainerStatusUnknown",
        "message": "The container could not be located when the pod was terminated",
        "finishedAt": "2026-01-01T11:59:50Z",
    }
    return {
        "metadata": {
            "name": "t-5-0",
            "labels": {"kubemap.io/task": "t", "kubemap.io/index": "5"},
            "annotations": {"kubemap.io/count": "1", "kubemap.io/attempt": "0"},
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "worker", "state": {"terminated": terminated}}],
        },
    }


def test_container_lost_with_its_node_is_an_infrastructure_failure() -> None:
    """chaos: test_node_emulator_stopped_and_restarted failed its task with 'exit code 137'."""
    seen = observe_pod(lost_container_pod(), NOW)
    assert seen is not None and seen.state is PodState.FAILED
    assert seen.infra_reason is not None and "ContainerStatusUnknown" in seen.infra_reason
    result = plan(spec(), running(), [seen], NOW)
    assert result.status.failed_indexes == ""
    assert [(r.start, r.infra_failures) for r in result.create][:1] == [(5, 1)]


def test_repeated_infrastructure_failures_back_off() -> None:
    """chaos: test_s3_stopped_30s_mid_task spent all 5 infrastructure retries within 20 s of
    an S3 outage. The first replacement is immediate (a deleted pod, a lost node); later ones
    wait like user retries do, so a store outage of a minute is ridden out."""
    just_failed = bad(1, code=4, attempt=1, infra=1, finished=NOW - timedelta(seconds=1))
    held = plan(spec(count=2), running(succeeded="0"), [just_failed], NOW)
    assert not held.create and held.status.failed_indexes == ""
    waited = bad(1, code=4, attempt=1, infra=1, finished=NOW - timedelta(seconds=11))
    due = plan(spec(count=2), running(succeeded="0"), [waited], NOW)
    assert [(r.start, r.attempt, r.infra_failures) for r in due.create] == [(1, 2, 2)]


def test_container_that_could_not_start_on_a_stopping_node_is_infrastructure() -> None:
    """chaos: test_node_emulator_stopped_and_restarted failed a task with 'exit code 128':
    a container started while its node shut down ends StartError, which no retry of the
    user's code is charged for (bounded by the infrastructure retry limit instead)."""
    manifest = lost_container_pod()
    terminated = manifest["status"]["containerStatuses"][0]["state"]["terminated"]  # type: ignore[index]
    terminated.update(exitCode=128, reason="StartError", message="the node is shutting down")
    seen = observe_pod(manifest, NOW)
    assert seen is not None and seen.infra_reason is not None
    result = plan(spec(), running(), [seen], NOW)
    assert result.status.failed_indexes == ""
