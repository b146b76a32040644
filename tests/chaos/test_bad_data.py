"""Bad task data on the cluster: corrupt or truncated inputs, a tampered result object, an
input that exhausts the worker's memory. Each ends the task (no wedge, no endless retry) with
an error that names the object or the index and says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import kubemap
import pytest
from chaoskit import NAMESPACE, get_task, report, task_pods, wait_finished
from kubemap.backends.kubernetes.backend import KubernetesBackend
from kubemap.contract import EXIT_INFRA_ERROR
from kubemap.resources.options import RunOptions
from kubemap.stores import Store, open_store
from kubemap.task.data import write_function, write_inputs
from kubemap.task.meta import TaskMeta, write_meta
from kubernetes import client

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


def double(x: int) -> int:
    return 2 * x


BACKEND = KubernetesBackend()
OPTIONS = RunOptions(backend="kubernetes", parallelism=4, namespace=NAMESPACE)


def staged(name: str, items: list[Any]) -> tuple[str, Store]:
    """Task data uploaded and signed as the SDK does, with no MapTask yet (so a test can
    damage it); start() then creates its key Secret and MapTask as the SDK does."""
    url = f"{os.environ['KUBEMAP_STORE'].rstrip('/')}/{name}"
    task = open_store(url)
    signer = BACKEND.task_signer(name, OPTIONS)
    write_function(task, double, signer)
    total = write_inputs(task, items, signer)
    write_meta(task, TaskMeta.new(total, "double"))
    return url, task


def start(name: str, url: str) -> None:
    BACKEND.start(open_store(url), 8, OPTIONS, name)


DAMAGE: list[tuple[str, Callable[[Store], None], str]] = [
    ("inputs.idx truncated", lambda t: t.put("inputs.idx", t.get("inputs.idx")[:20]), "inputs.idx"),
    ("inputs.bin truncated", lambda t: t.put("inputs.bin", t.get("inputs.bin")[:10]), "inputs.bin"),
    ("inputs.idx scrambled", lambda t: t.put("inputs.idx", bytes(reversed(t.get("inputs.idx")))), "inputs.idx"),
    # signed inputs: the garbage is caught by its MAC before any unpickling, and stops the task
    ("inputs.bin garbage", lambda t: t.put("inputs.bin", os.urandom(len(t.get("inputs.bin")))), "(inputs.bin) of task"),
]  # fmt: skip


@pytest.mark.timeout(420)
def test_damaged_inputs_fail_the_task_naming_the_object(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, unique: Callable[[str], str]
) -> None:
    """All four damages at once (each costs the operator's bounded infrastructure retries,
    with backoff, about 2.5 minutes). The worker names the damaged object in its pod's
    termination message; the task ends Failed instead of retrying for ever."""
    staged_tasks = []
    for what, damage, named in DAMAGE:
        name = unique("damaged")
        url, task = staged(name, list(range(8)))
        damage(task)
        start(name, url)
        staged_tasks.append((what, name, named))
    for what, name, named in staged_tasks:
        status = wait_finished(custom, name, 360)
        assert status["phase"] == "Failed", (what, status)
        # Only the worker's own infrastructure exits: once the task has failed the operator
        # stops the pods still running, and a stopped pod (137/143) says nothing.
        messages = [
            cs.state.terminated.message or ""
            for pod in task_pods(core, name)
            for cs in pod.status.container_statuses or []
            if cs.state.terminated is not None and cs.state.terminated.exit_code == EXIT_INFRA_ERROR
        ]
        assert messages and all(named in m for m in messages), (what, messages[:3])
        report(
            f"{what}: Failed after {len(messages)} failed pods, "
            f"{status.get('failed')} of 8 indices failed; pods said: {messages[0][:140]}"
        )


@pytest.mark.timeout(180)
def test_tampered_result_object_is_refused_on_collection(unique: Callable[[str], str]) -> None:
    name = unique("tamper")
    run = kubemap.submit(
        double,
        range(6),
        backend="kubernetes",
        namespace=NAMESPACE,
        store=os.environ.get("KUBEMAP_STORE"),
        name=name,
        items_per_pod=3,
    )
    assert run.wait(timeout=150).phase.value == "Succeeded"
    task = open_store(f"{os.environ['KUBEMAP_STORE'].rstrip('/')}/{name}")
    key = next(k for k in task.list("results/"))
    task.put(key, b"KMR1" + os.urandom(40))
    with pytest.raises(kubemap.KubemapError) as info:
        run.results()
    assert "results/" in str(info.value), str(info.value)
    report(f"tampered result object refused: {str(info.value)[:200]}")


@pytest.mark.timeout(180)
def test_input_that_exhausts_memory_is_reported_with_its_index(
    custom: client.CustomObjectsApi, unique: Callable[[str], str]
) -> None:
    def greedy(x: int) -> int:
        if x == 3:
            import resource
            from pathlib import Path

            # The pod's memory limit, as a cgroup would set it: the address space may grow by
            # 256 MiB at most. Never allocate past the host's memory for real: the node
            # emulator runs pods as host processes, without cgroups, on a shared machine.
            vm = next(
                int(line.split()[1]) * 1024
                for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmSize:")
            )
            resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
            bytearray(1 << 30)  # 1 GiB: refused at once, nothing is touched
        return x

    name = unique("oom")
    with pytest.raises(kubemap.MapTaskError) as info:
        kubemap.map(
            greedy,
            range(5),
            backend="kubernetes",
            namespace=NAMESPACE,
            store=os.environ.get("KUBEMAP_STORE"),
            name=name,
        )
    failures = info.value.failures
    assert set(failures) == {3}, failures
    assert failures[3].type == "MemoryError", failures[3]
    status = get_task(custom, name)["status"]
    assert status["failedIndexes"] == "3" and status["phase"] == "Failed", status
    report(f"out-of-memory input reported as {failures[3].type} for index 3")
