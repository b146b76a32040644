"""Unhappy paths on the real API server: every failure is explained where the user looks.

Store URLs the operator cannot serve are refused naming the field; a Secret with wrong keys
puts the S3 error code and bucket in the pod's termination message; a task from another
Python is refused by one pod, never retried; cancel of a finished task changes nothing; a
cancelled task's results need --partial; --detach leaves a task running; container tasks
keep the logs of deleted failed pods, and `kubemap results` says it has none.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubemap
import pytest
from click.testing import CliRunner
from e2ekit import NAMESPACE, Operator, get_task, task_pods, wait_phase
from kubemap.cli.main import main
from kubemap.stores import open_store
from kubemap.task import data as taskdata
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(420),
    pytest.mark.usefixtures("kubemap_installed"),
]
GROUP = ("kubemap.io", "v1alpha1", NAMESPACE, "maptasks")


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [*args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def maptask(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": name},
        "spec": spec,
    }


def upload(name: str, fn: Callable[[Any], Any], items: list[Any]) -> tuple[str, Any]:
    """The task's files as the SDK writes them, without starting it."""
    base = os.environ["KUBEMAP_STORE"]
    task = open_store(base).child(name)
    taskdata.write_function(task, fn)
    total = taskdata.write_inputs(task, items)
    taskdata.write_meta(task, taskdata.TaskMeta.new(total, "test"))
    return base, task


def terminated(pod: Any) -> Any:
    for status in pod.status.container_statuses or []:
        if status.state and status.state.terminated:
            return status.state.terminated
    return None


def wait_for_terminated_pod(core: client.CoreV1Api, name: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pod in task_pods(core, name):
            state = terminated(pod)
            if state is not None and state.message:
                return pod
        time.sleep(0.5)
    raise AssertionError(f"no pod of {name} terminated with a message within {timeout}s")


@pytest.fixture
def delete_after(custom: client.CustomObjectsApi) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(ApiException):
            custom.delete_namespaced_custom_object(*GROUP, name)


def test_store_urls_the_operator_cannot_serve_are_refused_naming_the_field(
    custom: client.CustomObjectsApi, unique: Callable[[str], str]
) -> None:
    for url in ("/data/kubemap", "gs://bucket/tasks"):
        body = maptask(unique("badstore"), {"mode": "Function", "count": 1, "store": {"url": url}})
        with pytest.raises(ApiException) as info:
            custom.create_namespaced_custom_object(*GROUP, body)
        assert info.value.status == 422
        message = json.loads(info.value.body)["message"]
        assert "spec.store.url" in message and url in message, message


def double(x: int) -> int:
    return 2 * x


def test_a_secret_with_wrong_keys_reports_the_s3_code_and_bucket(
    core: client.CoreV1Api,
    operator: Operator,
    unique: Callable[[str], str],
    delete_after: list[str],
) -> None:
    secret = unique("wrong-keys")
    core.create_namespaced_secret(
        NAMESPACE,
        {
            "metadata": {"name": secret},
            "stringData": {
                "AWS_ACCESS_KEY_ID": "replace-with-your-access-key-id",
                "AWS_SECRET_ACCESS_KEY": "replace-with-your-secret-access-key",
            },
        },
    )
    try:
        name = unique("wrongkeys")
        base, _ = upload(name, double, [1, 2])
        bucket = base.removeprefix("s3://").split("/", 1)[0]
        client.CustomObjectsApi(core.api_client).create_namespaced_custom_object(
            *GROUP,
            maptask(
                name,
                {"mode": "Function", "count": 2, "store": {"url": base, "secretName": secret}},
            ),
        )
        delete_after.append(name)
        pod = wait_for_terminated_pod(core, name)
        state = terminated(pod)
        assert state.exit_code == 4
        report = json.loads(state.message)
        assert report["cause"]["kind"] == "store"
        assert report["cause"]["code"] == "InvalidAccessKeyId", report
        assert report["cause"]["bucket"] == bucket
    finally:
        core.delete_namespaced_secret(secret, NAMESPACE)


def test_a_task_from_another_python_is_refused_by_one_pod_for_good(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    unique: Callable[[str], str],
    delete_after: list[str],
) -> None:
    name = unique("otherpy")
    base, task = upload(name, double, [1, 2, 3])
    meta = taskdata.read_meta(task)
    task.put("task.json", dataclasses.replace(meta, python="3.99.0").to_json())
    custom.create_namespaced_custom_object(
        *GROUP,
        maptask(
            name,
            {
                "mode": "Function",
                "count": 3,
                "itemsPerPod": 3,
                "backoffLimitPerIndex": 3,
                "store": {"url": base},
            },
        ),
    )
    delete_after.append(name)
    body = wait_phase(custom, name, {"Failed", "Succeeded"}, timeout=120)
    assert body["status"]["phase"] == "Failed"
    pods = task_pods(core, name)
    assert len(pods) == 1, [p.metadata.name for p in pods]  # refused once, never retried
    state = terminated(pods[0])
    assert state.exit_code == 5
    report = json.loads(state.message)
    cause = report["cause"]
    assert cause["kind"] == "version" and cause["code"] == "PythonVersionMismatch"
    assert cause["python"] == "3.99.0" and "Python 3.99.0" in cause["message"]
    assert "Python 3.99.0" in report["refused"] and "image" in report["refused"]


def test_cancel_of_a_finished_task_changes_nothing_and_says_so(
    custom: client.CustomObjectsApi, operator: Operator, unique: Callable[[str], str]
) -> None:
    name = unique("done")
    run = kubemap.submit(double, range(2), backend="kubernetes", namespace=NAMESPACE, name=name)
    assert run.wait(timeout=120).phase.value == "Succeeded"
    before = get_task(custom, name)
    code, out, _ = cli("cancel", name, "-n", NAMESPACE)
    assert code == 0 and f"maptask {name} already Succeeded: nothing to cancel" in out
    after = get_task(custom, name)
    assert before and after and not after["spec"].get("suspend")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def slow(x: int) -> int:
    time.sleep(30)
    return x


def test_a_cancelled_tasks_results_need_partial(
    custom: client.CustomObjectsApi, operator: Operator, unique: Callable[[str], str]
) -> None:
    name = unique("cancelled")
    run = kubemap.submit(slow, range(2), backend="kubernetes", namespace=NAMESPACE, name=name)
    code, out, _ = cli("cancel", name, "-n", NAMESPACE)
    assert code == 0 and "cancelled" in out
    assert run.wait(timeout=90).phase.value == "Cancelled"
    with pytest.raises(kubemap.CancelledError):
        run.results()
    code, out, err = cli("results", name, "-n", NAMESPACE)
    assert code == 1 and out == "" and "was cancelled" in err and "--partial" in err
    code, out, _ = cli("results", name, "-n", NAMESPACE, "--partial")
    assert code == 0 and out.splitlines() == ["null", "null"]


def test_detach_leaves_the_task_running(
    custom: client.CustomObjectsApi,
    operator: Operator,
    unique: Callable[[str], str],
    tmp_path: Any,
) -> None:
    name = unique("detached")
    (tmp_path / "tasks.py").write_text("def triple(x):\n    return 3 * x\n")
    (tmp_path / "in.txt").write_text("1\n2\n")
    code, out, err = cli(
        "run",
        f"{tmp_path}/tasks.py:triple",
        "--inputs",
        str(tmp_path / "in.txt"),
        "--backend",
        "kubernetes",
        "--namespace",
        NAMESPACE,
        "--name",
        name,
        "--detach",
    )
    assert code == 0 and out == "" and f"submitted MapTask {name}" in err
    body = wait_phase(custom, name, {"Succeeded", "Failed", "Cancelled"}, timeout=120)
    assert body["status"]["phase"] == "Succeeded"
    code, out, _ = cli("results", name, "-n", NAMESPACE)
    assert code == 0 and out.splitlines() == ["3", "6"]


def test_container_tasks_keep_the_logs_of_deleted_failed_pods(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    unique: Callable[[str], str],
    delete_after: list[str],
) -> None:
    name = unique("keeplogs")
    count = 23  # the chart keeps 20 failed pods: the 3 oldest are deleted, their logs kept
    custom.create_namespaced_custom_object(
        *GROUP,
        maptask(
            name,
            {
                "count": count,
                "parallelism": 6,
                "minSuccessRatio": 0,
                "template": {
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", 'echo "boom at index $KUBEMAP_INDEX"; exit 1'],
                },
            },
        ),
    )
    delete_after.append(name)
    body = wait_phase(custom, name, {"Succeeded", "Failed"}, timeout=300)
    assert body["status"]["failed"] == count, body["status"]
    deadline = time.monotonic() + 60
    while len(task_pods(core, name)) > 20 and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {int(p.metadata.labels["kubemap.io/index"]) for p in task_pods(core, name)}
    gone = sorted(set(range(count)) - left)
    assert len(gone) >= 3, left
    kept = core.read_namespaced_config_map(f"{name}-logs", NAMESPACE)
    assert kept.metadata.owner_references[0].uid == body["metadata"]["uid"]
    assert set(gone) <= {int(i) for i in kept.data["order"].split(",")}
    code, out, _ = cli("logs", name, "--index", str(gone[0]), "-n", NAMESPACE)
    assert code == 0, out
    assert f"boom at index {gone[0]}" in out and "exited with code 1" in out

    code, _, err = cli("results", name, "-n", NAMESPACE)
    assert code == 1 and "runs a container" in err and f"0 of {count} indices succeeded" in err


def test_list_wide_and_logs_that_cannot_be_read(
    operator: Operator, unique: Callable[[str], str]
) -> None:
    def fails(x: int) -> int:
        raise ValueError(f"bad input {x}")

    name = unique("wide")
    run = kubemap.submit(fails, range(1), backend="kubernetes", namespace=NAMESPACE, name=name)
    run.wait(timeout=120)
    code, out, _ = cli("list", "-n", NAMESPACE, "-o", "wide")
    header = out.splitlines()[0].split()
    assert header[-4:] == ["PODS", "RETRIES", "AGE", "STORE"]
    row = next(line for line in out.splitlines() if line.startswith(name)).split()
    assert row[-1] == f"{os.environ['KUBEMAP_STORE'].rstrip('/')}/{name}" and row[-3] == "0"
    # The test cluster's node emulator serves no pod logs: the CLI must not pretend it read them.
    code, out, err = cli("logs", name, "--index", "0", "-n", NAMESPACE)
    if code == 0:
        assert "==>" in out  # a cluster that serves logs (kind)
    else:  # unreadable: still says so, and shows what the pod said when it ended
        assert code == 1 and "cannot read the logs of pod" in err
        assert "(logs unreadable; worker exited with code" in out, out


def sleepy(x: int) -> int:
    time.sleep(3)
    return x + 1


def test_ctrl_c_in_map_with_detach_leaves_the_task_running(
    custom: client.CustomObjectsApi,
    operator: Operator,
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = unique("sdkdetach")
    # Ctrl-C arrives as KeyboardInterrupt in the main thread while map() waits.
    timer = threading.Timer(2.0, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            kubemap.map(
                sleepy, range(2), backend="kubernetes", namespace=NAMESPACE, name=name, detach=True
            )
    finally:
        timer.cancel()
    assert f"task {name} left running (detach=True)" in capsys.readouterr().err
    body = wait_phase(custom, name, {"Succeeded", "Failed", "Cancelled"}, timeout=120)
    assert body["status"]["phase"] == "Succeeded" and not body["spec"].get("suspend")
    assert kubemap.MapRun.attach(name, store=os.environ["KUBEMAP_STORE"]).results() == [1, 2]
