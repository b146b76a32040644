"""Iterating on the cluster: results as they land, the per-item cache shared with local
runs, files as inputs, and kubemap.Executor, through the operator and real pods.

Executions are counted with marker objects the functions write to S3 (pods run anywhere,
so a local file would not do on kind); pods are counted with a watch."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import kubemap
import pytest
from e2ekit import NAMESPACE, Operator, PodWatch, opts, task_pods
from kubemap.stores import open_store
from kubemap.task import data as taskdata
from kubernetes import client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed"),
]


def markers(name: str) -> str:
    return f"{os.environ['KUBEMAP_STORE']}/markers-{name}"


def test_as_completed_first_result_before_the_last_item_starts(
    operator: Operator, unique: Callable[[str], str]
) -> None:
    name = unique("landing")
    where = markers(name)

    def gated(x: int) -> int:
        from kubemap.stores import open_store

        store = open_store(where)
        store.put(f"started-{x}", b"")
        deadline = time.monotonic() + 120
        while x > 0 and not store.exists("go") and time.monotonic() < deadline:
            time.sleep(0.1)
        return x * 10

    # One pod per item: with the SDK's batch of 3, item 0's result waited for items 1 and 2,
    # which wait for "go" (120 s): the test passed only by timing out its gate.
    run = kubemap.submit(gated, range(6), **opts(name=name, parallelism=1, items_per_pod=1))
    stream = run.as_completed()
    assert next(stream) == (0, 0)
    started = open_store(where)
    assert not started.exists("started-5")
    started.put("go", b"")
    assert dict(stream) == {i: i * 10 for i in range(1, 6)}
    assert list(kubemap.imap(gated, range(4), **opts(parallelism=2))) == [0, 10, 20, 30]


def test_cache_is_shared_by_local_and_cluster_runs(
    core: client.CoreV1Api, operator: Operator, unique: Callable[[str], str]
) -> None:
    where = markers(unique("cache"))
    version = uuid.uuid4().hex  # entries from an earlier run of this test must not hit

    def counted(x: int) -> int:
        from kubemap.stores import open_store

        open_store(where).put(f"ran-{x}-{uuid.uuid4().hex}", b"")
        return x * 3

    store = os.environ["KUBEMAP_STORE"]
    local = kubemap.map(counted, range(10), cache_version=version, store=store)
    assert local == [x * 3 for x in range(10)]
    assert len(list(open_store(where).list())) == 10
    name = unique("cached")
    with PodWatch(core, name) as pods:
        run = kubemap.submit(counted, range(12), **opts(name=name, cache_version=version))
        assert (run.cache_hits, run.cache_misses) == (10, 2)
        assert run.results() == [x * 3 for x in range(12)]
    assert len(pods.seen) == 2  # hits cost no pod
    ran = sorted(int(k.split("-")[1]) for k in open_store(where).list())
    assert ran == [*range(10), 10, 11]
    # the cluster's workers filled the cache: a local run of all 12 runs nothing
    again = kubemap.submit(counted, range(12), cache_version=version, store=store)
    assert (again.cache_hits, again.results()[-1]) == (12, 33)
    assert len(list(open_store(where).list())) == 12


def test_files_as_inputs_on_the_cluster(operator: Operator, unique: Callable[[str], str]) -> None:
    base = f"{os.environ['KUBEMAP_STORE']}/files-{unique('in')}"
    store = open_store(base)
    for i in range(5):
        store.put(f"scans/{i}.txt", b"y" * i)
    store.put("scans/notes.md", b"skip me")

    def measure(f: kubemap.File) -> tuple[str, int]:
        with f.open() as stream:
            return f.name, len(stream.read()) + 0 * len(f.local_path().read_bytes())

    results = kubemap.map(measure, kubemap.files(f"{base}/scans/*.txt"), **opts(parallelism=3))
    assert results == [(f"{i}.txt", i) for i in range(5)]


def test_executor_on_the_cluster(
    core: client.CoreV1Api, operator: Operator, unique: Callable[[str], str]
) -> None:
    def power(x: int, y: int) -> int:
        if y < 0:
            raise ArithmeticError(f"negative power {y}")
        return int(x**y)

    with kubemap.Executor(max_workers=4, items_per_pod=5, batch_delay=0.5, **opts()) as executor:
        futures = [executor.submit(power, x, 2) for x in range(20)]
        failing = executor.submit(power, 2, -1)
        assert [f.result(timeout=300) for f in futures] == [x * x for x in range(20)]
        with pytest.raises(ArithmeticError, match="negative power -1"):
            failing.result(timeout=300)
        assert list(executor.map(power, range(6), [3] * 6, chunksize=2)) == [x**3 for x in range(6)]


def test_retry_after_a_fix_reruns_exactly_the_missing(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    unique: Callable[[str], str],
) -> None:
    name = unique("rerun")
    where = markers(name)
    open_store(where).put("broken", b"")

    def fragile(x: int) -> int:
        from kubemap.stores import open_store

        store = open_store(where)
        store.put(f"ran-{x}-{uuid.uuid4().hex}", b"")
        if x % 4 == 2 and store.exists("broken"):
            raise ValueError(f"{x} is broken")
        return x * 7

    def ran() -> list[int]:
        keys = [k for k in open_store(where).list() if k.startswith("ran-")]
        open_store(where).delete_prefix("ran-")
        return sorted(int(k.split("-")[1]) for k in keys)

    run = kubemap.submit(fragile, range(12), **opts(name=name, parallelism=2, items_per_pod=1))
    status = run.wait(timeout=300)
    assert status.phase.value == "Failed"
    ran()
    done = taskdata.succeeded_indexes(open_store(run.store_url))
    missing = sorted(set(range(12)) - set(done))  # failed, never run, or stopped mid-way
    assert 2 in missing
    open_store(where).delete_prefix("broken")  # the fix
    before = {p.metadata.name for p in task_pods(core, name)}  # kept for their logs
    with PodWatch(core, name) as pods:
        run.retry()
        status = run.wait(timeout=300)
    assert status.phase.value == "Succeeded" and (status.succeeded, status.failed) == (12, 0)
    assert ran() == sorted(missing)  # nothing that succeeded ran again
    # Pods of the rerun: the missing indices, plus any whose result landed after the first
    # round's verdict (the operator never reads S3); those find their result and run nothing.
    assert set(missing) <= {int(p.split("-")[-2]) for p in pods.seen - before}
    assert run.results() == [x * 7 for x in range(12)]
    body = custom.get_namespaced_custom_object(
        "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name
    )
    assert body["status"]["succeededIndexes"] == "0-11" and body["status"]["failedIndexes"] == ""


def test_kubectl_annotate_reruns_a_yaml_task(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    unique: Callable[[str], str],
    tmp_path: Any,
) -> None:
    import subprocess

    import yaml
    from e2ekit import kubectl, wait_phase

    name = unique("yaml-rerun")
    manifest = {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": name},
        "spec": {
            "count": 3,
            "parallelism": 3,
            "backoffLimitPerIndex": 1,
            "template": {
                "image": "busybox",
                # index 1 fails on its first round (attempts 0 and 1); a rerun starts at 2
                "command": [
                    "sh",
                    "-c",
                    'test "$KUBEMAP_INDEX" != 1 || test "$KUBEMAP_ATTEMPT" -ge 2',
                ],
            },
        },
    }
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(manifest))
    subprocess.run([kubectl(), "apply", "-n", NAMESPACE, "-f", str(path)], check=True)
    body = wait_phase(custom, name, {"Succeeded", "Failed"}, timeout=240)
    assert body["status"]["phase"] == "Failed" and body["status"]["failedIndexes"] == "1"
    before = {p.metadata.name for p in task_pods(core, name)}
    assert before == {f"{name}-1-0", f"{name}-1-1"}  # the failed pods, kept for their logs
    with PodWatch(core, name) as pods:
        subprocess.run(
            [kubectl(), "annotate", "mt", name, "-n", NAMESPACE, "kubemap.io/retry=1"],
            check=True,
        )
        deadline = time.monotonic() + 240
        while True:
            body = custom.get_namespaced_custom_object(
                "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name
            )
            status = body["status"]
            if status.get("retryToken") == "1" and status["phase"] in ("Succeeded", "Failed"):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
    assert status["phase"] == "Succeeded", status
    assert (status["succeeded"], status["failed"], status["succeededIndexes"]) == (3, 0, "0-2")
    assert pods.seen - before == {f"{name}-1-2"}  # only the failed index, a fresh attempt
