"""MapTasks admitted by a real Kueue (v0.17, `tests/cluster/testcluster up --kueue`): issue 21,
item 4, for tasks that run pods.

A ResourceFlavor, a ClusterQueue of 2 CPUs (preemption of lower priorities within it) and a
LocalQueue in the test namespace; worker pods request 500m, so the quota admits 4 at a time.
kueuekit's pod watch counts what Kueue did to the task's pods (gated at creation, admitted,
preempted, finished). The pods are processes on this machine (the node emulator): a function
that must still be running when something happens waits for a file the test creates, so
nothing depends on how long anything takes.

- 20 chunks at 500m: never more than 4 admitted pods unfinished at once; every result.
- a higher-priority task preempts it: both finish, every result once, the preempted chunks
  rerun with 0 user retries charged (the task allows none: a charged retry would fail it).
- a queue that does not exist: refused at submit (SDK) and failed at once (YAML).
- Kueue absent: queue= refused (skipped on a cluster with Kueue; the others skip without).

    KUBEMAP_TESTCLUSTER_STATE=... tests/cluster/testcluster up --kueue
    eval "$(tests/cluster/testcluster env)"
    PATH="$(tests/tools/kube-tools):$PATH" .venv/bin/pytest -m e2e tests/e2e/test_kueue_maptask.py
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubemap
import pytest
from e2ekit import NAMESPACE, Operator, get_task, opts, task_pods, wait_for
from kubemap.contract import ANNOTATION_FAILURES, ANNOTATION_INFRA, task_label
from kubemap.errors import ConfigError
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
import kueuekit
from kueuekit import PodTally, Queue


class Tally(PodTally):
    """kueuekit's count, plus pods being stopped: Kueue frees a preempted pod's quota when it
    deletes the pod (its Workload is finalized then), so the preemptor may start while the
    victim still terminates. `max admitted at once, not stopping` leaves those victims out."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.stopping: set[str] = set()
        self.max_not_stopping = 0

    def see(self, kind: str, pod: Any) -> None:
        super().see(kind, pod)
        with self._lock:
            if pod.metadata.deletion_timestamp is not None:
                self.stopping.add(pod.metadata.name)
            live = self.admitted - self.finished - self.stopping
            self.max_not_stopping = max(self.max_not_stopping, len(live))


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    pytest.mark.usefixtures("kubemap_installed"),
]

FITS = 4  # 2 CPUs of quota / 500m per pod
POD = {"requests": {"cpu": "500m", "memory": "128Mi"}}


@pytest.fixture(scope="module")
def kueue_reason(api: client.ApiClient) -> str | None:
    """Why Kueue is not usable on this cluster (None: it is)."""
    return kueuekit.kueue_missing(api)


@pytest.fixture(scope="module")
def queue(api: client.ApiClient, kueue_reason: str | None) -> Iterator[Queue]:
    """2 CPUs, lower priorities preempted, a LocalQueue in the test namespace."""
    if kueue_reason:
        pytest.skip(kueue_reason)
    local = f"kubemap-e2e-{os.urandom(3).hex()}"
    q = kueuekit.create_queue(
        api,
        NAMESPACE,
        cpu="2",
        preemption={"withinClusterQueue": "LowerPriority"},
        local_queue=local,
    )
    yield q
    custom = client.CustomObjectsApi(api)
    custom.delete_namespaced_custom_object(
        kueuekit.GROUP, kueuekit.VERSION, NAMESPACE, "localqueues", local
    )
    kueuekit.delete_queue(api, q)


@pytest.fixture
def high_priority(api: client.ApiClient) -> Iterator[str]:
    scheduling = client.SchedulingV1Api(api)
    name = f"kubemap-e2e-high-{os.urandom(3).hex()}"
    scheduling.create_priority_class(
        client.V1PriorityClass(metadata=client.V1ObjectMeta(name=name), value=1000)
    )
    yield name
    scheduling.delete_priority_class(name)


def _waiter(release: Path) -> Callable[[int], int]:
    def square_when_released(x: int) -> int:
        import time as _time
        from pathlib import Path as _Path

        while not _Path(str(release)).exists():
            _time.sleep(0.1)
        return x * x

    return square_when_released


def test_a_queued_task_never_runs_more_pods_than_the_quota_admits(
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    queue: Queue,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o777)
    release = tmp_path / "go"
    name = unique("kq")
    messages: set[str] = set()
    with Tally(api, NAMESPACE, label_selector=f"kubemap.io/task={task_label(name)}") as tally:
        run = kubemap.submit(
            _waiter(release),
            range(20),
            **opts(
                name=name,
                queue=queue.local_queue,
                parallelism=20,
                items_per_pod=1,
                resources=POD,
            ),
        )
        # Held by the quota: 4 run, 16 wait gated, and the task says so.
        wait_for("4 pods running", lambda: len(tally.names("running")) >= FITS)

        def waiting() -> dict[str, Any] | None:
            found = (get_task(custom, name) or {}).get("status") or {}
            return found if found.get("queued") == 20 - FITS else None

        status = wait_for("the task says it waits for quota", waiting)
        messages.add(str(status.get("message")))
        assert status["queued"] == 20 - FITS, status
        assert status["active"] == 20 and status["phase"] == "Running", status
        from click.testing import CliRunner
        from kubemap.cli.main import main

        shown = CliRunner().invoke(main, ["get", name, "-n", NAMESPACE])
        assert "waiting for quota in queue " + queue.local_queue in shown.output, shown.output
        release.touch()
        final = run.wait(timeout=600)
        results = run.results()
    assert final.phase.value == "Succeeded", final
    assert results == [x * x for x in range(20)]
    seen = tally.snapshot()
    print(f"\nqueued task: {seen}")
    assert seen["max admitted at once"] <= FITS, seen
    assert tally.max_not_stopping <= FITS, seen
    assert seen["gated at creation"] == 20 and seen["not gated at creation"] == [], seen
    assert seen["admitted"] == 20 and seen["bound while gated"] == [], seen
    assert any(m.startswith(f"waiting for quota in queue {queue.local_queue}") for m in messages)
    body = get_task(custom, name)
    assert body is not None
    assert body["status"]["retries"] == 0 and body["status"].get("queued", 0) == 0
    run.delete()


def test_a_higher_priority_task_preempts_and_both_finish_with_every_result_once(
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    queue: Queue,
    high_priority: str,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o777)
    release = tmp_path / "go"
    low, high = unique("klow"), unique("khigh")
    selector = f"kubemap.io/task in ({task_label(low)},{task_label(high)})"
    with Tally(api, NAMESPACE, label_selector=selector) as tally:
        low_run = kubemap.submit(
            _waiter(release),
            range(8),
            **opts(
                name=low, queue=queue.local_queue, parallelism=8, items_per_pod=1, resources=POD
            ),
        )
        wait_for("4 low pods running", lambda: len(tally.names("running")) >= FITS)
        high_run = kubemap.submit(
            lambda x: -x,
            range(FITS),
            **opts(
                name=high,
                queue=queue.local_queue,
                priority=high_priority,
                parallelism=FITS,
                items_per_pod=1,
                resources=POD,
            ),
        )
        # Kueue stops low pods to admit the high ones, which finish while low waits.
        high_status = high_run.wait(timeout=600)
        assert high_status.phase.value == "Succeeded", high_status
        preempted = tally.names("preempted")
        assert preempted and all(p.startswith(low) for p in preempted), tally.snapshot()
        release.touch()
        low_status = low_run.wait(timeout=600)
        seen = tally.snapshot()
    assert low_status.phase.value == "Succeeded", low_status
    assert low_run.results() == [x * x for x in range(8)]
    assert high_run.results() == [-x for x in range(FITS)]
    print(f"\npreemption: {seen}")
    # The quota holds for every pod Kueue has not stopped; the victims it stopped overlap
    # the preemptors only while they terminate (printed, not asserted: Kueue's timing).
    print(f"max admitted at once, not being stopped: {tally.max_not_stopping}")
    assert tally.max_not_stopping <= FITS, seen
    assert set(seen["preempted"].values()) == {"WorkloadEvictedDueToPreempted"}, seen
    body = get_task(custom, low)
    assert body is not None
    status = body["status"]
    # Every result once: 8 succeeded, no retry charged, each preemption counted as a rerun.
    assert status["succeeded"] == 8 and status["succeededIndexes"] == "0-7", status
    assert status["retries"] == 0 and status["preempted"] == len(preempted), status
    # Each preempted pod (attempt 0) is followed by its rerun (attempt 1), seen by the watch.
    created = tally.names("created_gated") | tally.names("created_ungated")
    reruns = {name.rsplit("-", 1)[0] + "-1" for name in preempted}
    assert reruns <= created and reruns <= tally.names("finished"), (reruns, created)
    print(
        f"preempted pods: {len(preempted)}, reruns: {len(reruns)}, retries charged: "
        f"{status['retries']}, pods of the low task: {len([n for n in created if n.startswith(low)])}"
    )
    for pod in task_pods(core, task_label(low)):  # those left: no failure of any kind charged
        assert pod.metadata.annotations[ANNOTATION_FAILURES] == "0"
        assert pod.metadata.annotations[ANNOTATION_INFRA] == "0"
    low_run.delete()
    high_run.delete()


def test_a_queue_that_does_not_exist_fails_at_once(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    queue: Queue,
    unique: Callable[[str], str],
) -> None:
    name = unique("knope")
    with pytest.raises(ConfigError) as refused:
        kubemap.submit(lambda x: x, range(3), **opts(name=name, queue="nope"))
    text = str(refused.value)
    assert "'nope'" in text and f"kubectl get localqueues -n {NAMESPACE}" in text, text
    assert get_task(custom, name) is None  # nothing was submitted

    # The same task as YAML: the operator fails it before any pod.
    custom.create_namespaced_custom_object(
        "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", _container_task(name, "nope")
    )
    body = wait_for(
        "the MapTask fails",
        lambda: (
            (b := get_task(custom, name)) and b.get("status", {}).get("phase") == "Failed" and b
        ),
    )
    condition = body["status"]["conditions"][-1]
    assert condition["reason"] == "QueueUnavailable", condition
    assert (
        "'nope'" in body["status"]["message"]
        and "kubectl get localqueues" in body["status"]["message"]
    )
    assert task_pods(core, name) == []
    custom.delete_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name)


def test_without_kueue_a_queue_is_refused(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    kueue_reason: str | None,
    unique: Callable[[str], str],
) -> None:
    if kueue_reason is None:
        pytest.skip("Kueue is installed on this cluster: this test needs a cluster without it")
    name = unique("knokueue")
    with pytest.raises(ConfigError) as refused:
        kubemap.submit(lambda x: x, range(3), **opts(name=name, queue="batch"))
    text = str(refused.value)
    assert "Kueue is not installed" in text and "localqueues.kueue.x-k8s.io" in text, text
    assert get_task(custom, name) is None
    custom.create_namespaced_custom_object(
        "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", _container_task(name, "batch")
    )
    body = wait_for(
        "the MapTask fails",
        lambda: (
            (b := get_task(custom, name)) and b.get("status", {}).get("phase") == "Failed" and b
        ),
    )
    assert body["status"]["conditions"][-1]["reason"] == "QueueUnavailable"
    assert "Kueue is not installed" in body["status"]["message"]
    assert task_pods(core, name) == []
    custom.delete_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name)


def _container_task(name: str, queue: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": name},
        "spec": {
            "mode": "Container",
            "count": 3,
            "queueName": queue,
            "template": {"image": "busybox", "command": ["true"]},
        },
    }
