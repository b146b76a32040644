"""Pod manifests from the pure builder: names, labels, env, ownership, defaults."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubemap.contract import LABEL_INDEX, LABEL_TASK, POD_FINALIZER, task_label
from kubemap.resources.maptask import MapTaskSpec
from kubemap.resources.workerpool import python_minor
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.builder import TaskRef, build_pod, pod_name
from kubemap_operator.tasks.observe import observe_pod
from kubemap_operator.tasks.planner import PodRequest

TASK = TaskRef("squares", "default", "uid-1")
SETTINGS = Settings(s3_endpoint="http://127.0.0.1:8333", worker_image="kubemap:test")


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]
    }


@pytest.mark.parametrize(
    ("task", "start", "attempt", "expected"),
    [
        ("squares", 0, 0, "squares-0-0"),
        ("squares", 123456, 7, "squares-123456-7"),
        ("a" * 50, 5, 1, "a" * 50 + "-5-1"),
    ],
)
def test_short_names_are_plain(task: str, start: int, attempt: int, expected: str) -> None:
    assert pod_name(task, start, attempt) == expected


def test_long_names_are_cut_with_a_hash_and_stay_unique() -> None:
    a, b = "x" * 60 + "-alpha", "x" * 60 + "-beta"
    names = {pod_name(t, 99999999, 100) for t in (a, b)}
    assert len(names) == 2
    assert all(len(n) <= 63 and n.endswith("-99999999-100") for n in names)
    assert len(task_label(a)) <= 63 and task_label(a) != task_label(b)


def test_function_mode_pod() -> None:
    spec = MapTaskSpec.model_validate(
        {"mode": "Function", "count": 100, "store": {"url": "s3://b/tasks"}}
    )
    pod = build_pod(TASK, spec, PodRequest(10, 5, attempt=2, failures=1), SETTINGS)
    meta = pod["metadata"]
    assert meta["name"] == "squares-10-2"
    assert meta["labels"][LABEL_TASK] == "squares" and meta["labels"][LABEL_INDEX] == "10"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubemap"
    assert meta["annotations"]["kubemap.io/count"] == "5"
    assert meta["finalizers"] == [POD_FINALIZER]
    owner = meta["ownerReferences"][0]
    assert owner["uid"] == "uid-1" and owner["controller"] and owner["blockOwnerDeletion"]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "kubemap.worker"]
    assert container["image"] == "kubemap:test"
    env = env_of(pod)
    assert env["KUBEMAP_TASK_URL"] == "s3://b/tasks/squares"
    assert (
        env["KUBEMAP_INDEX"],
        env["KUBEMAP_COUNT"],
        env["KUBEMAP_TOTAL"],
        env["KUBEMAP_ATTEMPT"],
        env["KUBEMAP_FAILURES"],  # attempt 2 after one user failure and one lost pod
    ) == ("10", "5", "100", "2", "1")
    assert env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:8333"
    assert env["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "kubemap-s3", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert pod["spec"]["restartPolicy"] == "Never"
    assert container["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_container_mode_items_and_template_win() -> None:
    spec = MapTaskSpec.model_validate(
        {
            "count": 3,
            "items": ["a", "b c", "d"],
            "itemsPerPod": 2,
            "template": {
                "image": "busybox",
                "command": ["sh", "-c", "echo $KUBEMAP_ITEM"],
                "env": [{"name": "X", "value": "1"}],
                "resources": {"limits": {"cpu": "1"}},
                "nodeSelector": {"k": "v"},
                "labels": {LABEL_TASK: "spoofed", "team": "a"},
            },
            "store": {"url": "s3://b/p", "secretName": "mine", "endpoint": "http://s3"},
        }
    )
    pod = build_pod(TASK, spec, PodRequest(1, 2), SETTINGS)
    env = env_of(pod)
    assert env["KUBEMAP_ITEM"] == "b c" and json.loads(env["KUBEMAP_ITEMS"]) == ["b c", "d"]
    assert env["X"] == "1" and env["AWS_ENDPOINT_URL_S3"] == "http://s3"
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "mine"
    c = pod["spec"]["containers"][0]
    assert c["command"][0] == "sh" and c["resources"] == {"limits": {"cpu": "1"}}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert (
        pod["metadata"]["labels"][LABEL_TASK] == "squares"
        and pod["metadata"]["labels"]["team"] == "a"
    )
    assert pod["spec"]["nodeSelector"] == {"k": "v"}


def test_settings_from_env_and_errors() -> None:
    s = Settings.from_env(
        {
            "KUBEMAP_WATCH_NAMESPACES": "a, b",
            "KUBEMAP_POD_CREATE_QPS": "5",
            "KUBEMAP_WORKER_POD_DEFAULTS": '{"resources": {"requests": {"cpu": "10m"}}}',
        }
    )
    assert s.watch_namespaces == ("a", "b") and s.pod_create_qps == 5.0
    assert s.worker_pod_defaults == {"resources": {"requests": {"cpu": "10m"}}}
    with pytest.raises(ValueError, match="KUBEMAP_POD_CREATE_QPS"):
        Settings.from_env({"KUBEMAP_POD_CREATE_QPS": "fast"})
    with pytest.raises(ValueError, match="not valid JSON"):
        Settings.from_env({"KUBEMAP_WORKER_POD_DEFAULTS": "{"})


def test_built_pod_round_trips_through_observation() -> None:
    from datetime import UTC, datetime

    spec = MapTaskSpec.model_validate({"count": 9, "template": {"image": "busybox"}})
    pod = build_pod(TASK, spec, PodRequest(4, 3, attempt=1, failures=1, infra_failures=2), SETTINGS)
    pod["status"] = {
        "phase": "Failed",
        "containerStatuses": [
            {
                "state": {
                    "terminated": {
                        "exitCode": 3,
                        "finishedAt": "2026-01-01T00:00:00Z",
                        "message": '{"v":1,"succeeded":"4","failed":"5-6"}',
                    }
                }
            }
        ],
    }
    seen = observe_pod(pod, datetime(2026, 1, 1, tzinfo=UTC))
    assert seen is not None
    assert (seen.start, seen.count, seen.attempt, seen.failures, seen.infra_failures) == (
        4,
        3,
        1,
        1,
        2,
    )
    assert seen.report is not None and str(seen.report.failed) == "5-6" and seen.exit_code == 3
    assert seen.has_finalizer and seen.infra_reason is None


@pytest.mark.parametrize(
    ("status", "meta", "state", "infra"),
    [
        ({"phase": "Running"}, {}, "active", False),
        ({"phase": "Succeeded"}, {}, "succeeded", False),
        ({"phase": "Failed", "reason": "Evicted"}, {}, "failed", True),
        (
            {"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {},
            "failed",
            True,
        ),
        ({"phase": "Running"}, {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "active", False),
        (
            {"phase": "Running"},
            {"deletionTimestamp": "2025-12-31T00:00:00Z"},
            "failed",
            True,
        ),  # node lost
    ],
)
def test_observed_states(
    status: dict[str, Any], meta: dict[str, Any], state: str, infra: bool
) -> None:
    from datetime import UTC, datetime

    pod = {"metadata": {"name": "p", "labels": {LABEL_INDEX: "0"}, **meta}, "status": status}
    seen = observe_pod(pod, datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC))
    assert (
        seen is not None and seen.state.value == state and (seen.infra_reason is not None) is infra
    )


def test_sdk_builds_a_function_mode_maptask() -> None:
    from kubemap.backends.kubernetes.backend import build_maptask
    from kubemap.resources.options import RunOptions

    body = build_maptask(
        "sq-1",
        "s3://bucket/runs/sq-1",
        100,
        RunOptions(
            backend="kubernetes",
            parallelism=7,
            items_per_pod=5,
            retries=2,
            min_success_ratio=0.9,
            timeout=30.5,
            image="img:1",
            env={"A": "1"},
            resources={"limits": {"cpu": "1"}},
            node_selector={"n": "x"},
            tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            service_account="sa",
            store_endpoint="http://minio.data:9000",
        ),
    )
    spec = body["spec"]
    assert body["kind"] == "MapTask" and body["metadata"]["name"] == "sq-1"
    # The Python that pickled the function: a pool never hands it to another minor.
    assert body["metadata"]["annotations"] == {"kubemap.io/python": python_minor()}
    assert (
        spec["mode"] == "Function"
        and spec["count"] == 100
        and spec["store"] == {"url": "s3://bucket/runs", "endpoint": "http://minio.data:9000"}
    )
    assert (spec["parallelism"], spec["itemsPerPod"], spec["backoffLimitPerIndex"]) == (7, 5, 2)
    assert spec["minSuccessRatio"] == 0.9 and spec["activeDeadlineSeconds"] == 31
    assert spec["template"] == {
        "image": "img:1",
        "env": [{"name": "A", "value": "1"}],
        "resources": {"limits": {"cpu": "1"}},
        "nodeSelector": {"n": "x"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "serviceAccountName": "sa",
    }
    with pytest.raises(ValueError, match="needs an S3 store"):
        build_maptask("x", "file:///tmp/store/x", 1, RunOptions())


@pytest.mark.parametrize(
    ("status", "phase", "reason"),
    [
        ({"phase": "Running", "succeeded": 3, "total": 9, "active": 2}, "Running", None),
        ({"phase": "Succeeded", "succeeded": 9, "total": 9}, "Succeeded", "Completed"),
        (
            {
                "phase": "Failed",
                "failed": 1,
                "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}],
            },
            "Failed",
            "DeadlineExceeded",
        ),
        (
            {
                "phase": "Failed",
                "failed": 2,
                "conditions": [{"type": "Failed", "status": "True", "reason": "FailedIndexes"}],
            },
            "Failed",
            "FailedIndexes",
        ),
        (
            {
                "phase": "Cancelled",
                "conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended"}],
            },
            "Cancelled",
            "Suspended",
        ),
        (
            {
                "phase": "Failed",
                "conditions": [{"type": "Failed", "status": "True", "reason": "UsageError"}],
            },
            "Failed",
            "UsageError",
        ),
    ],
)
def test_sdk_reads_run_status_from_the_maptask(
    status: dict[str, Any], phase: str, reason: str | None
) -> None:
    from kubemap.core.status import run_status

    got = run_status(status, total=9)
    assert got.phase.value == phase and got.reason == reason and got.total == 9
    assert got.succeeded == status.get("succeeded", 0) and got.active == status.get("active", 0)


@pytest.mark.parametrize(
    ("image", "annotation", "store", "wrapped"),
    [
        ("kubemap:test", None, "s3://b/p", True),  # the worker image holds kubemap
        ("busybox", None, "s3://b/p", False),  # any other image may have no Python
        ("busybox", "true", "s3://b/p", True),  # an image built FROM the kubemap image
        ("kubemap:test", "false", "s3://b/p", False),  # turned off
        ("kubemap:test", None, None, False),  # no store to keep it in
    ],
)
def test_a_container_command_runs_through_the_output_keeper_where_kubemap_is(
    image: str, annotation: str | None, store: str | None, wrapped: bool
) -> None:
    template: dict[str, Any] = {"image": image, "command": ["sh", "-c", "echo hi"]}
    if annotation is not None:
        template["annotations"] = {"kubemap.io/keep-output": annotation}
    body: dict[str, Any] = {"count": 2, "template": template}
    if store is not None:
        body["store"] = {"url": store}
    pod = build_pod(TASK, MapTaskSpec.model_validate(body), PodRequest(0, 1), SETTINGS)
    command = pod["spec"]["containers"][0]["command"]
    keeper = ["python", "-m", "kubemap.runtime.capture", "--"]
    assert command == ([*keeper, "sh", "-c", "echo hi"] if wrapped else ["sh", "-c", "echo hi"])
