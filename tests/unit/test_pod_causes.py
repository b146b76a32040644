"""What the operator reads from a pod that will never run, or that ran out of memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubemap.core.attempts import AttemptState
from kubemap.core.plan import Recorded, Rules, plan
from kubemap.core.policy import ExitKind
from kubemap.core.status import Phase, Reason
from kubemap_operator.tasks.observe import observe_pod

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def pod(name: str, status: dict[str, Any], created: datetime = NOW) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"kubemap.io/index": name.split("-")[1]},
            "annotations": {"kubemap.io/count": "1"},
            "creationTimestamp": created.isoformat(),
        },
        "status": status,
    }


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {
        "phase": "Pending",
        "containerStatuses": [
            {
                "image": "ghcr.io/x/missing:1",
                "state": {"waiting": {"reason": reason, "message": message}},
            }
        ],
    }


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (waiting("ImagePullBackOff", "back-off pulling"), "image", "ImagePullBackOff"),
        (waiting("ErrImagePull", "not found"), "image", "ErrImagePull"),
        (
            waiting("CreateContainerConfigError", 'secret "s3" not found'),
            "secret",
            "CreateContainerConfigError",
        ),
    ],
)
def test_a_pod_that_cannot_start_fails_with_its_cause(
    status: dict[str, Any], kind: str, code: str
) -> None:
    seen = observe_pod(pod("t-0-0", status), NOW)
    assert seen is not None and seen.state is AttemptState.FAILED and seen.stuck
    assert seen.kind() is ExitKind.INFRA
    assert seen.cause is not None and (seen.cause.kind, seen.cause.code) == (kind, code)
    if kind == "image":
        assert "ghcr.io/x/missing:1" in seen.cause.message


def test_unschedulable_fails_only_after_a_while() -> None:
    status = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: insufficient memory",
                "lastTransitionTime": (NOW - timedelta(seconds=30)).isoformat(),
            }
        ],
    }
    early = observe_pod(pod("t-0-0", status), NOW)
    assert early is not None and early.state is AttemptState.ACTIVE
    late = observe_pod(pod("t-0-0", status), NOW + timedelta(seconds=200))
    assert late is not None and late.state is AttemptState.FAILED
    assert late.cause is not None and "insufficient memory" in late.cause.message


def test_oom_killed_is_a_user_failure_named_as_such() -> None:
    status = {
        "phase": "Failed",
        "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
    }
    seen = observe_pod(pod("t-4-0", status), NOW)
    assert seen is not None and seen.kind() is ExitKind.USER
    decision = plan(Rules(total=5, parallelism=1), Recorded(), [seen], NOW)
    assert decision.verdict is not None and decision.verdict.phase is Phase.FAILED
    assert decision.verdict.reason is Reason.FAILED_INDEXES
    assert "index 4 failed (OOMKilled" in decision.verdict.message


def test_the_same_image_failure_on_the_first_wave_stops_the_task() -> None:
    pods = [observe_pod(pod(f"t-{i}-0", waiting("ImagePullBackOff")), NOW) for i in range(4)]
    decision = plan(Rules(total=20, parallelism=4), Recorded(), [p for p in pods if p], NOW)
    assert decision.verdict is not None and decision.verdict.reason is Reason.SYSTEMATIC
    assert "ghcr.io/x/missing:1" in decision.verdict.message
    assert "check the image name" in decision.verdict.message
    assert "0 succeeded, 0 failed, 20 not run" in decision.verdict.message


def test_a_stuck_pods_retry_comes_due_while_it_stays_stuck() -> None:
    """A pod stuck on a pull is dated from its creation: seen again later, still stuck, its
    backoff has run out and a retry is started (before the fix, each look restarted it)."""
    body = pod("t-0-1", waiting("ImagePullBackOff", "back-off"))
    body["metadata"]["annotations"].update(
        {"kubemap.io/infra-failures": "1", "kubemap.io/attempt": "1"}
    )
    rules = Rules(total=1, parallelism=1)
    first = observe_pod(body, NOW + timedelta(seconds=2))
    assert first is not None and first.finished_at == NOW
    early = plan(rules, Recorded(), [first], NOW + timedelta(seconds=2))
    assert early.start == () and early.next_due is not None and early.next_due > 0
    later = NOW + timedelta(seconds=60)
    again = observe_pod(body, later)
    assert again is not None
    due = plan(rules, Recorded(), [again], later)
    assert [(r.start, r.attempt) for r in due.start] == [(0, 2)], due


@pytest.mark.parametrize("reason", ["InvalidImageName", "ErrImageNeverPull"])
def test_an_image_no_retry_can_fetch_fails_the_task_at_once(reason: str) -> None:
    seen = observe_pod(pod("t-0-0", waiting(reason, "not present")), NOW)
    assert seen is not None
    decision = plan(Rules(total=20, parallelism=4), Recorded(), [seen], NOW)
    assert decision.verdict is not None and decision.verdict.reason is Reason.SYSTEMATIC
    assert "ghcr.io/x/missing:1" in decision.verdict.message


def missing_secret_pod(name: str, namespace: str = "ns1", reason: str = "") -> dict[str, Any]:
    """A worker pod whose S3 Secret does not exist in its namespace, as the kubelet shows it."""
    body = pod(
        name,
        waiting(reason or "CreateContainerConfigError", 'secret "kubemap-s3" not found'),
    )
    body["metadata"]["namespace"] = namespace
    body["spec"] = {
        "containers": [
            {
                "name": "worker",
                "env": [
                    {
                        "name": key,
                        "valueFrom": {"secretKeyRef": {"name": "kubemap-s3", "key": key}},
                    }
                    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
                ],
            }
        ]
    }
    return body


@pytest.mark.parametrize("reason", ["CreateContainerConfigError", "CreateContainerError"])
def test_a_missing_s3_secret_fails_a_small_task_at_once_naming_the_fix(reason: str) -> None:
    """Issue 18 item 15: two items, two pods waiting for a Secret that does not exist. The
    first wave (2 pods) never reached the 4 same causes that make a failure systematic, so
    the pods were retried with backoff until the deadline, or for ever."""
    pods = [observe_pod(missing_secret_pod(f"t-{i}-0", reason=reason), NOW) for i in range(2)]
    assert all(p is not None and p.stuck for p in pods)
    decision = plan(Rules(total=2, parallelism=10), Recorded(), [p for p in pods if p], NOW)
    assert decision.verdict is not None, decision.start
    assert decision.verdict.reason is Reason.SYSTEMATIC
    message = decision.verdict.message
    assert 'secret "kubemap-s3" not found in namespace ns1' in message, message
    assert "kubectl create secret generic kubemap-s3 -n ns1" in message, message
    assert "AWS_ACCESS_KEY_ID" in message and "operator.watchNamespaces" in message, message
    assert "0 succeeded, 0 failed, 2 not run" in message


def test_a_missing_configmap_is_named_with_its_namespace() -> None:
    body = pod("t-0-0", waiting("CreateContainerConfigError", 'configmap "settings" not found'))
    body["metadata"]["namespace"] = "team-a"
    seen = observe_pod(body, NOW)
    assert seen is not None and seen.cause is not None and seen.cause.kind == "secret"
    decision = plan(Rules(total=1, parallelism=1), Recorded(), [seen], NOW)
    assert decision.verdict is not None and decision.verdict.reason is Reason.SYSTEMATIC
    message = decision.verdict.message
    assert 'configmap "settings" not found in namespace team-a' in message, message
    assert "create it in namespace team-a" in message, message


def test_a_create_container_error_of_another_kind_is_no_config_cause() -> None:
    """A runtime that could not create the container for another reason (a node going
    away) is not a missing Secret: the pod is not stuck for it."""
    body = pod("t-0-0", waiting("CreateContainerError", "context deadline exceeded"))
    seen = observe_pod(body, NOW)
    assert seen is not None and not seen.stuck and seen.cause is None
