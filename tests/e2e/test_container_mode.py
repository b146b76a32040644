"""Container mode from YAML (kubectl apply of examples/), CRD validation, and deletion."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2ekit import (
    NAMESPACE,
    REPO,
    Operator,
    PodWatch,
    apply,
    get_task,
    kubectl,
    task_pods,
    wait_phase,
)
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed"),
]


def maptask(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.mark.parametrize("example", ["maptask-count.yaml", "maptask-items.yaml"])
def test_examples_run_to_success(
    example: str,
    operator: Operator,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    manifest = yaml.safe_load((REPO / "examples" / example).read_text())
    name = unique(manifest["metadata"]["name"])
    manifest["metadata"]["name"] = name
    spec = manifest["spec"]
    with PodWatch(core, name) as pods:
        apply(manifest, tmp_path)
        body = wait_phase(custom, name, {"Succeeded", "Failed"}, timeout=240)
    total = spec.get("count") or len(spec["items"])
    assert body["status"]["phase"] == "Succeeded", body["status"]
    assert body["status"]["succeeded"] == total and body["status"]["total"] == total
    assert pods.most_active <= spec["parallelism"]
    out = subprocess.run(
        [kubectl(), "get", "mt", name, "-n", NAMESPACE], capture_output=True, text=True, check=True
    )
    header, row = out.stdout.splitlines()[:2]
    assert (
        header.split()[:5] == ["NAME", "PHASE", "SUCCEEDED", "TOTAL", "FAILED"]
        and "Succeeded" in row
    )


def test_container_failure_is_retried_then_reported(
    operator: Operator,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = unique("fails")
    apply(
        maptask(
            name,
            {
                "count": 3,
                "parallelism": 3,
                "backoffLimitPerIndex": 1,
                "minSuccessRatio": 0.5,
                "template": {
                    "image": "busybox",
                    "command": ["sh", "-c", 'test "$KUBEMAP_INDEX" != 1'],
                },
            },
        ),
        tmp_path,
    )
    body = wait_phase(custom, name, {"Succeeded", "Failed"}, timeout=240)
    status = body["status"]
    assert status["failedIndexes"] == "1" and status["succeeded"] == 2, status
    assert status["phase"] == "Succeeded"  # 2 of 3 >= minSuccessRatio 0.5
    assert "1 failures tolerated" in status["message"]
    kept = {p.metadata.name: p.status.phase for p in task_pods(core, name)}
    assert kept == {
        f"{name}-1-0": "Failed",
        f"{name}-1-1": "Failed",
    }  # kept for their logs, nothing else


def test_pod_deleted_from_outside_is_replaced_without_spending_a_retry(
    operator: Operator,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = unique("evicted")
    apply(
        maptask(
            name,
            {
                "count": 2,
                "parallelism": 2,
                "backoffLimitPerIndex": 0,
                "template": {"image": "busybox", "command": ["sleep", "4"]},
            },
        ),
        tmp_path,
    )
    deadline = time.monotonic() + 60
    while True:
        phases = {p.metadata.name: p.status.phase for p in task_pods(core, name)}
        if phases.get(f"{name}-0-0") == "Running":
            break
        assert time.monotonic() < deadline, phases
        time.sleep(0.2)
    core.delete_namespaced_pod(f"{name}-0-0", NAMESPACE)
    body = wait_phase(custom, name, {"Succeeded", "Failed"}, timeout=120)
    assert body["status"]["phase"] == "Succeeded" and body["status"]["succeeded"] == 2, body[
        "status"
    ]


def test_ttl_after_finished_deletes_the_task(
    operator: Operator,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = unique("ttl")
    apply(
        maptask(
            name,
            {
                "count": 1,
                "ttlSecondsAfterFinished": 2,
                "template": {"image": "busybox", "command": ["true"]},
            },
        ),
        tmp_path,
    )
    deadline = time.monotonic() + 60
    seen_finished = False
    while (body := get_task(custom, name)) is not None:
        seen_finished = seen_finished or (body.get("status") or {}).get("phase") == "Succeeded"
        assert time.monotonic() < deadline, "the finished task was not deleted after its TTL"
        time.sleep(0.3)
    assert seen_finished


def test_invalid_specs_are_refused_with_a_message(
    custom: client.CustomObjectsApi, unique: Callable[[str], str]
) -> None:
    def create(spec: dict[str, Any]) -> str:
        body = maptask(unique("bad"), spec)
        with pytest.raises(ApiException) as info:
            custom.create_namespaced_custom_object(
                "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", body
            )
        assert info.value.status == 422
        return str(json.loads(info.value.body)["message"])

    assert "Container mode needs spec.template.image" in create({"count": 2})
    assert "give spec.count" in create({"template": {"image": "x"}})
    assert "differs from the number of spec.items" in create(
        {"count": 3, "items": ["a"], "template": {"image": "x"}}
    )
    assert "Function mode needs spec.store.url" in create({"mode": "Function", "count": 3})
    assert "parallelism" in create({"count": 1, "parallelism": 0, "template": {"image": "x"}})


def test_immutable_fields_and_deletion_removes_pods(
    operator: Operator,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = unique("deleteme")
    apply(
        maptask(
            name,
            {
                "count": 4,
                "parallelism": 2,
                "template": {"image": "busybox", "command": ["sleep", "300"]},
            },
        ),
        tmp_path,
    )
    deadline = time.monotonic() + 60
    while len(task_pods(core, name)) < 2:
        assert time.monotonic() < deadline, "pods did not start"
        time.sleep(0.5)
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(
            "kubemap.io",
            "v1alpha1",
            NAMESPACE,
            "maptasks",
            name,
            {"spec": {"count": 9}},
            _content_type="application/merge-patch+json",
        )
    assert info.value.status == 422 and "spec.count cannot change" in info.value.body
    subprocess.run(
        [kubectl(), "delete", "mt", name, "-n", NAMESPACE, "--wait=false"],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 120
    while task_pods(core, name) or get_task(custom, name):
        assert time.monotonic() < deadline, (
            "the MapTask or its pods were not removed after deletion"
        )
        time.sleep(0.5)


def test_a_million_items_with_failed_chunks_keeps_the_object_small(
    operator: Operator,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = unique("million")
    # 50 pods of 20,000 indices; every chunk whose number is 3 mod 7 fails.
    script = "test $(( KUBEMAP_INDEX / 20000 % 7 )) != 3"
    apply(
        maptask(
            name,
            {
                "count": 1_000_000,
                "itemsPerPod": 20_000,
                "parallelism": 25,
                "minSuccessRatio": 0.5,
                "template": {"image": "busybox", "command": ["sh", "-c", script]},
            },
        ),
        tmp_path,
    )
    body = wait_phase(custom, name, {"Succeeded", "Failed"}, timeout=300)
    status = body["status"]
    failed_chunks = [c for c in range(50) if c % 7 == 3]
    assert status["phase"] == "Succeeded" and status["total"] == 1_000_000
    assert (
        status["failed"] == 20_000 * len(failed_chunks)
        and status["succeeded"] == 1_000_000 - status["failed"]
    )
    assert status["failedIndexes"] == ",".join(
        f"{c * 20000}-{c * 20000 + 19999}" for c in failed_chunks
    )
    size = len(json.dumps(body))
    assert size < 64 * 1024
    print(f"\n1,000,000 items, 50 pods: whole MapTask object {size} bytes")


def test_active_deadline_fails_the_task_and_stops_its_pods(
    operator: Operator,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = unique("deadline")
    apply(
        maptask(
            name,
            {
                "count": 3,
                "activeDeadlineSeconds": 3,
                "template": {"image": "busybox", "command": ["sleep", "120"]},
            },
        ),
        tmp_path,
    )
    body = wait_phase(custom, name, {"Succeeded", "Failed"}, timeout=60)
    assert body["status"]["phase"] == "Failed"
    assert body["status"]["conditions"][-1]["reason"] == "DeadlineExceeded"
    deadline = time.monotonic() + 60
    while task_pods(core, name):
        assert time.monotonic() < deadline, "pods outlived the task's deadline"
        time.sleep(0.5)
