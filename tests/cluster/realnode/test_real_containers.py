"""What only real containers show: kubemap's image under a real kubelet and containerd.

Pods select the real node (label + toleration, ``ON_REAL_NODE``); the image was imported into
containerd by ``testcluster up --real-node``, so ``IfNotPresent`` pulls nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterlib.realnode_config import REAL_NODE_NAME
from kubernetes import client
from realnodekit import IMAGE, NAMESPACE, ON_REAL_NODE, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RESTRICTED_POD = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
KUBEMAP_CLI = Path(sys.executable).parent / "kubemap"


def maptask(
    name: str, count: int, template: dict[str, Any], *, tolerate_failures: bool = True
) -> dict[str, Any]:
    return {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": name},
        "spec": {
            "mode": "Container",
            "count": count,
            "parallelism": count,
            "backoffLimitPerIndex": 0,
            # Tolerated: a failed index does not stop the others. Not: the first failure
            # stops the task and its message names the index and why.
            "minSuccessRatio": 0 if tolerate_failures else 1,
            "template": {
                "image": IMAGE,
                "imagePullPolicy": "IfNotPresent",
                **ON_REAL_NODE,
                **template,
            },
        },
    }


def create_task(custom: client.CustomObjectsApi, body: dict[str, Any]) -> str:
    custom.create_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "maptasks", body)
    return str(body["metadata"]["name"])


def task_status(custom: client.CustomObjectsApi, name: str) -> dict[str, Any]:
    body = custom.get_namespaced_custom_object(
        "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name
    )
    return dict(body.get("status") or {})


def finished(custom: client.CustomObjectsApi, name: str, timeout: float = 240) -> dict[str, Any]:
    return dict(
        wait_for(
            f"MapTask {name} to finish",
            lambda: (s := task_status(custom, name)).get("phase") in ("Succeeded", "Failed") and s,
            timeout,
        )
    )


def task_pods(core: client.CoreV1Api, name: str) -> list[Any]:
    return list(core.list_namespaced_pod(NAMESPACE, label_selector=f"kubemap.io/task={name}").items)


def delete_task(custom: client.CustomObjectsApi, name: str) -> None:
    custom.delete_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name)


def test_a_restricted_pod_of_the_image_runs_in_a_container_and_its_logs_are_read(
    core: client.CoreV1Api, unique: Callable[[str], str]
) -> None:
    name = unique("real-probe")
    script = (
        "import os; print('uid', os.getuid()); "
        "print('cgroup', open('/proc/self/cgroup').read().count('kubepods')); "
        "import kubemap.runtime.worker; print('worker importable')"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            **ON_REAL_NODE,
            "restartPolicy": "Never",
            "securityContext": RESTRICTED_POD,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", script],
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
        },
    }
    core.create_namespaced_pod(NAMESPACE, pod)
    try:
        done = wait_for(
            f"pod {name} to succeed",
            lambda: (
                (p := core.read_namespaced_pod(name, NAMESPACE)).status.phase == "Succeeded" and p
            ),
            120,
        )
        assert done.spec.node_name == REAL_NODE_NAME
        status = done.status.container_statuses[0]
        assert status.image_id, "containerd reports the image's digest"
        assert status.container_id.startswith("containerd://")
        # The logs API reads the container's log file through the real kubelet.
        logs = core.read_namespaced_pod_log(name, NAMESPACE, _preload_content=False).data.decode()
        lines = logs.splitlines()
        assert "uid 10001" in lines  # the image's USER, under runAsNonRoot
        assert any(line.startswith("cgroup ") and line != "cgroup 0" for line in lines), logs
        assert "worker importable" in lines
    finally:
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)


def test_container_mode_task_runs_on_the_real_node_and_kubemap_logs_reads_it(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, unique: Callable[[str], str]
) -> None:
    name = unique("real-logs")
    command = (
        'echo "real container for index $KUBEMAP_INDEX uid $(id -u)"; [ "$KUBEMAP_INDEX" != 1 ]'
    )
    create_task(custom, maptask(name, 3, {"command": ["sh", "-c", command]}))
    try:
        status = finished(custom, name)
        assert status["succeededIndexes"] == "0,2" and status["failedIndexes"] == "1", status
        pods = task_pods(core, name)  # the failed pod is kept for its logs
        assert pods and {p.spec.node_name for p in pods} == {REAL_NODE_NAME}
        run = subprocess.run(
            [str(KUBEMAP_CLI), "logs", name, "--index", "1", "--namespace", NAMESPACE],
            capture_output=True, text=True, env=os.environ, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "real container for index 1 uid 10001" in run.stdout, run.stdout
    finally:
        delete_task(custom, name)


@pytest.fixture(scope="module")
def oom_task(
    core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> Iterator[tuple[str, dict[str, Any]]]:
    """One index that touches 256 MiB under a 48 MiB limit: the kernel's OOM killer ends it."""
    name = f"real-oom-{os.getpid()}"
    script = "b = bytearray(256 << 20); b[::4096] = b'x' * len(b[::4096]); print('survived')"
    resources = {"requests": {"memory": "48Mi"}, "limits": {"memory": "48Mi"}}
    template = {"command": ["python", "-c", script], "resources": resources}
    create_task(custom, maptask(name, 1, template, tolerate_failures=False))
    try:
        yield name, finished(custom, name)
    finally:
        delete_task(custom, name)


def test_a_pod_killed_by_its_memory_limit_fails_its_index(
    core: client.CoreV1Api, oom_task: tuple[str, dict[str, Any]]
) -> None:
    name, status = oom_task
    assert status["phase"] == "Failed", status
    assert status["failedIndexes"] == "0", status
    kept = task_pods(core, name)
    assert kept, "the failed pod of index 0 is kept"
    terminated = kept[-1].status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)  # the real kernel's


def test_an_oom_killed_index_is_reported_as_out_of_memory(
    oom_task: tuple[str, dict[str, Any]],
) -> None:
    _, status = oom_task
    assert "index 0 failed (OOMKilled: the container exceeded its memory limit" in (
        status.get("message") or ""
    ), status


@pytest.fixture(scope="module")
def unpullable_task(
    core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> Iterator[tuple[str, str]]:
    """An image containerd does not have, with pullPolicy Never: no registry is contacted."""
    name, image = f"real-nopull-{os.getpid()}", "kubemap-missing:never-built"
    body = maptask(name, 1, {"command": ["true"]}, tolerate_failures=False)
    body["spec"]["template"].update(image=image, imagePullPolicy="Never")
    create_task(custom, body)
    try:
        yield name, image
    finally:
        delete_task(custom, name)


def test_an_unpullable_image_is_named_by_the_kubelet(
    core: client.CoreV1Api, unpullable_task: tuple[str, str]
) -> None:
    name, image = unpullable_task

    def waiting() -> Any:
        for pod in task_pods(core, name):
            for cs in pod.status.container_statuses or []:
                if cs.state.waiting and cs.state.waiting.reason == "ErrImageNeverPull":
                    return cs.state.waiting
        return None

    state = wait_for(f"the pod of {name} to wait on its image", waiting, 120)
    assert image in state.message


def test_an_unpullable_image_fails_the_task_fast_naming_the_image(
    custom: client.CustomObjectsApi, unpullable_task: tuple[str, str]
) -> None:
    name, image = unpullable_task
    status = finished(custom, name, timeout=90)
    assert status["phase"] == "Failed" and image in (status.get("message") or ""), status
