"""A writer to the bucket alone cannot run code in the cluster (kubemap.task.signing).

The planted object is a pickle that creates a marker file when it is unpickled. Pods of the
test cluster are host processes, so the marker would appear on this machine: the tests count
markers. A control task made without the SDK (no key Secret, so unauthenticated) shows that
the plant does run code when nothing checks it, so the signed case can fail.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubemap
import pytest
from chaoskit import NAMESPACE, get_task, opts, report, task_pods, wait_finished
from faults import wait_until
from kubemap.api.workerpool import WorkerPool
from kubemap.backends.kubernetes.backend import KubernetesBackend, build_maptask
from kubemap.resources.options import RunOptions
from kubemap.stores import Store, open_store
from kubemap.task import data as taskdata
from kubemap.task import signing
from kubemap.task.meta import TaskMeta, write_meta
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


class Planted:
    """Unpickling this opens (creates) the marker file: code of the bucket writer's choice."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def double(x: int) -> int:
    return 2 * x


def markers(where: Path) -> int:
    return len(list(where.glob("marker-*")))


def terminated_messages(core: client.CoreV1Api, name: str) -> list[dict[str, Any]]:
    out = []
    for pod in task_pods(core, name):
        for cs in pod.status.container_statuses or []:
            state = cs.state.terminated
            if state is not None and state.message:
                out.append({"pod": pod.metadata.name, **json.loads(state.message)})
    return out


def stage(name: str, options: RunOptions, signed: bool) -> tuple[Store, KubernetesBackend]:
    task = open_store(os.environ["KUBEMAP_STORE"]).child(name)
    backend = KubernetesBackend()
    signer = backend.task_signer(name, options) if signed else None
    taskdata.write_function(task, double, signer)
    total = taskdata.write_inputs(task, range(8), signer)
    write_meta(task, TaskMeta.new(total, "double"))
    return task, backend


@pytest.mark.timeout(300)
def test_a_planted_fn_pkl_fails_the_task_for_good_and_never_runs(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    options = RunOptions(backend="kubernetes", parallelism=4, namespace=NAMESPACE, retries=3)
    # control: no key Secret (a MapTask made by hand), so nothing checks fn.pkl
    control = unique("unsigned")
    task, _ = stage(control, options, signed=False)
    task.put("fn.pkl", pickle.dumps(Planted(tmp_path / "marker-control")))
    body = build_maptask(control, task.url, 8, options)
    custom.create_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "maptasks", body)
    # the attack: the SDK signed the task, a bucket writer replaced fn.pkl before it ran
    name = unique("planted")
    task, backend = stage(name, options, signed=True)
    victims = tmp_path / "signed"
    victims.mkdir()
    task.put("fn.pkl", pickle.dumps(Planted(victims / "marker-signed")))
    backend.start(task, 8, options, name)

    assert wait_finished(custom, control, 240)["phase"] == "Failed"
    assert markers(tmp_path) == 1, "the control's plant did not run: the test proves nothing"
    status = wait_finished(custom, name, 240)
    assert status["phase"] == "Failed", status
    assert status["conditions"][-1]["reason"] == "SystematicFailure", status["conditions"]
    assert f"fn.pkl of task {name} does not match its signature" in status["message"], status
    assert "tampered" in status["message"] and status["succeeded"] == 0, status
    reports = terminated_messages(core, name)
    assert reports and all(r["cause"]["kind"] == "tampered" for r in reports), reports
    pods = {r["pod"] for r in reports}
    # permanent: no pod retried, at most the first wave of `parallelism` pods ran at all
    assert all(p.endswith("-0") for p in pods) and len(pods) <= 4, pods
    assert markers(victims) == 0, "the planted fn.pkl was unpickled in a worker pod"
    run = kubemap.MapRun.attach(name, backend="kubernetes", namespace=NAMESPACE)
    with pytest.raises(kubemap.MapTaskError) as info:
        run.results()
    assert "fn.pkl" in str(info.value) and "submit the task again" in str(info.value)
    report(
        f"planted fn.pkl: Failed ({status['conditions'][-1]['reason']}) after "
        f"{len(pods)} pod(s), markers created 0 (control: 1); {status['message'][:160]}"
    )


@pytest.mark.timeout(240)
def test_a_planted_result_object_is_refused_by_the_sdk(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = unique("planted-result")
    run = kubemap.submit(double, range(6), **opts(name=name, items_per_pod=3))
    assert run.wait(timeout=180).phase.value == "Succeeded"
    assert run.results() == [0, 2, 4, 6, 8, 10]
    secret = core.read_namespaced_secret(signing.secret_name(name), NAMESPACE)
    uid = get_task(custom, name)["metadata"]["uid"]
    assert [o.uid for o in secret.metadata.owner_references] == [uid]  # goes with the task
    task = open_store(run.store_url)
    key = next(iter(task.list("results/")))
    forged = taskdata.encode_results({0: Planted(tmp_path / "marker-result"), 1: 2, 2: 4})
    for blob in (forged, taskdata.encode_results({0: 0}, sealed=True) + bytes(32)):
        task.put(key, blob)
        for reader in (run, kubemap.MapRun.attach(name, backend="kubernetes", namespace=NAMESPACE)):
            with pytest.raises(signing.TamperedError, match=r"result object .*results/"):
                reader.results()
            with pytest.raises(signing.TamperedError):
                list(reader.as_completed())
    assert markers(tmp_path) == 0
    custom.delete_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name)

    def secret_gone() -> bool:
        try:
            core.read_namespaced_secret(signing.secret_name(name), NAMESPACE)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until("the key Secret is deleted with its MapTask", secret_gone, 60)
    report("planted result objects refused by results() and as_completed() (submitter "
          "and attach); markers created 0; key Secret deleted with its MapTask")  # fmt: skip


@pytest.mark.timeout(300)
def test_a_planted_fn_pkl_on_a_warm_pool_fails_the_task_and_never_runs(
    custom: client.CustomObjectsApi, unique: Callable[[str], str], tmp_path: Path
) -> None:
    """Pool tasks are signed with the pool's key (its workers mount it): a signed task runs,
    a planted fn.pkl stops its task at the first lease, and the workers live on."""
    wp = WorkerPool(unique("signpool"), namespace=NAMESPACE, replicas=2, idle_ttl_seconds=0)
    wp.create()
    try:
        wait_until("2 pool workers ready", lambda: wp.status().ready == 2, 120)
        good = kubemap.submit(double, range(20), **opts(name=unique("pool-ok"), pool=wp.name))
        assert good.results(timeout=120) == [2 * x for x in range(20)]
        options = RunOptions(backend="kubernetes", namespace=NAMESPACE, pool=wp.name)
        name = unique("pool-planted")
        task, backend = stage(name, options, signed=True)
        task.put("fn.pkl", pickle.dumps(Planted(tmp_path / "marker-pool")))
        backend.start(task, 8, options, name)
        status = wait_finished(custom, name, 120)
        assert status["phase"] == "Failed" and status["succeeded"] == 0, status
        assert status["conditions"][-1]["reason"] == "SystematicFailure", status["conditions"]
        assert f"fn.pkl of task {name} does not match its signature" in status["message"]
        assert markers(tmp_path) == 0, "the planted fn.pkl was unpickled in a pool worker"
        after = kubemap.submit(double, range(5), **opts(name=unique("pool-after"), pool=wp.name))
        assert after.results(timeout=120) == [0, 2, 4, 6, 8]  # the pool still serves
        report(f"planted fn.pkl on pool {wp.name}: Failed ({status['message'][:120]}); "
              "markers created 0; the pool served the next task")  # fmt: skip
    finally:
        wp.delete()
