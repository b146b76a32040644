"""What a worker printed outlives its pod on the test cluster: a function-mode MapTask's pods,
a container-mode MapTask's command (run through kubemap's output keeper) and a warm pool's
workers each keep their items' output in the task's store, and `kubemap logs NAME --index I
-n NS` prints a succeeded index's output after its pod is gone (the node emulator serves no
pods/log, so nothing here can come from the cluster's logs). Counts objects, never times."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import kubemap
import pytest
from e2ekit import NAMESPACE, Operator, apply, task_pods, wait_for, wait_phase
from kubemap.api.workerpool import WorkerPool
from kubemap.stores import open_store
from kubemap.task.output import OUTPUT_PREFIX, read_output
from kubernetes import client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed"),
]


def says(x: int) -> int:
    print(f"item {x} says hello", flush=True)
    os.system(f"echo 'child of {x}' >&2")  # a subprocess's output is caught too
    if x == 3:
        raise ValueError("three")
    return x


def greets(x: int) -> int:
    print(f"item {x} says hello", flush=True)
    os.system(f"echo 'child of {x}' >&2")
    return x


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubemap", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=os.environ.copy(),
    )


def test_a_function_tasks_pods_keep_their_output_after_they_are_gone(
    operator: Operator, core: client.CoreV1Api, unique: Callable[[str], str], tmp_path: Path
) -> None:
    run = kubemap.submit(
        says,
        range(8),
        backend="kubernetes",
        namespace=NAMESPACE,
        store=os.environ["KUBEMAP_STORE"],
        name=unique("kept"),
        items_per_pod=2,
        parallelism=4,
        min_success_ratio=0.5,
    )
    run.wait(timeout=240)
    task = run.task_store
    objects = list(task.list(OUTPUT_PREFIX))
    assert len(objects) == 4, objects  # one per pod (a slice of 2), not one per item
    gone = lambda: f"{run.name}-4-0" not in {p.metadata.name for p in task_pods(core, run.name)}  # noqa: E731
    wait_for("the succeeded pod of index 5 to be removed", gone, timeout=60)
    shown = cli("logs", run.name, "--index", "5", "-n", NAMESPACE, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"==> index 5 (attempt 0, {run.name}-4-0, ran ")
    assert "item 5 says hello\nchild of 5\n" in shown.stdout
    assert "item 4 says hello" not in shown.stdout
    failed = read_output(task, 3)  # a failed index's output is kept too, every attempt's
    assert failed and all(f.text == b"item 3 says hello\nchild of 3\n" for f in failed)
    outside = cli("logs", run.name, "--index", "8", "-n", NAMESPACE, cwd=tmp_path)
    assert outside.returncode == 1 and "index 8 is out of range" in outside.stderr


def test_a_container_tasks_command_output_is_kept_per_index(
    operator: Operator,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = unique("boxkept")
    store = os.environ["KUBEMAP_STORE"]
    apply(
        {
            "apiVersion": "kubemap.io/v1alpha1",
            "kind": "MapTask",
            "metadata": {"name": name},
            "spec": {
                "count": 3,
                "parallelism": 3,
                "store": {"url": store},
                "template": {
                    "image": "busybox",
                    "annotations": {"kubemap.io/keep-output": "true"},
                    "command": ["sh", "-c", 'echo "index $KUBEMAP_INDEX"; echo oops >&2'],
                },
            },
        },
        tmp_path,
    )
    body = wait_phase(custom, name, {"Succeeded", "Failed"}, timeout=240)
    assert body["status"]["phase"] == "Succeeded", body["status"]
    # every pod succeeded and is removed (the phase may be written just before the deletes)
    wait_for("the succeeded pods to be removed", lambda: not task_pods(core, name), timeout=60)
    task = open_store(store).child(name)
    assert len(list(task.list(OUTPUT_PREFIX))) == 3
    shown = cli("logs", name, "--index", "2", "-n", NAMESPACE, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"==> index 2 (attempt 0, {name}-2-0, ran ")
    assert shown.stdout.endswith("index 2\noops\n")
    got = cli("get", name, "-n", NAMESPACE, cwd=tmp_path)  # the keeper's timing records
    assert got.returncode == 0, got.stderr
    # p50/p95 once: from the status (`timing:`) when the operator has a summary, else from
    # the records in the store (`item time:`)
    assert got.stdout.count(" p50 ") == 1, got.stdout
    slowest = next(line for line in got.stdout.splitlines() if line.startswith("slowest:"))
    assert slowest.count("index ") == 3  # one slice per index: each is its slice's slowest
    results = cli("results", name, "-n", NAMESPACE, cwd=tmp_path)
    assert results.returncode == 1 and f"kubemap logs {name} --index I" in results.stderr


def test_a_warm_pool_keeps_each_items_output(
    pool: Callable[..., WorkerPool], unique: Callable[[str], str], tmp_path: Path
) -> None:
    wp = pool(replicas=2, idle_ttl_seconds=0)
    run = kubemap.submit(
        greets,
        range(40),
        backend="kubernetes",
        namespace=NAMESPACE,
        store=os.environ["KUBEMAP_STORE"],
        name=unique("poolkept"),
        pool=wp.name,
    )
    run.wait(timeout=240)
    task = run.task_store
    objects = list(task.list(OUTPUT_PREFIX))
    assert 1 <= len(objects) < 40  # one per lease that printed, never one per item
    kept = [read_output(task, i) for i in range(40)]
    assert all(len(k) == 1 for k in kept)
    assert all(k[0].text == f"item {i} says hello\nchild of {i}\n".encode()
               for i, k in enumerate(kept))  # fmt: skip
    shown = cli("logs", run.name, "--index", "17", "-n", NAMESPACE, cwd=tmp_path)
    assert shown.returncode == 0 and "item 17 says hello\nchild of 17\n" in shown.stdout
