"""Signing wired through the task files, the worker, the pod builders and the pool worker:
a bucket writer's fn.pkl, input or result is refused before it is unpickled, for good."""

from __future__ import annotations

import pickle
import secrets
from pathlib import Path
from typing import Any

import pytest
from kubemap.contract import FN_KEY, INPUTS_KEY, RESULTS_PREFIX
from kubemap.core.policy import Cause, systematic_cause
from kubemap.resources.maptask import MapTaskSpec
from kubemap.resources.termination import infra_cause
from kubemap.resources.workerpool import WorkerPoolSpec
from kubemap.runtime.poolworker import FunctionCache, NoPoolKey, run_lease
from kubemap.runtime.worker import run_slice
from kubemap.stores import Store, open_store
from kubemap.task import data as taskdata
from kubemap.task import signing
from kubemap.task.signing import Signer, TamperedError
from kubemap_operator.pools.builder import worker_template
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.builder import TaskRef, build_pod
from kubemap_operator.tasks.planner import PodRequest

KEY = bytes(range(32))
SETTINGS = Settings(s3_endpoint="http://127.0.0.1:8333", worker_image="kubemap:test")


class Planted:
    """What a bucket writer puts in fn.pkl: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def triple(x: int) -> int:
    return 3 * x


def signed_task(name: str, items: list[Any]) -> tuple[Store, Signer]:
    task = open_store(f"memory://signing-{secrets.token_hex(4)}").child(name)
    signer = Signer(name, signing.new_key())
    taskdata.write_function(task, triple, signer)
    taskdata.write_inputs(task, items, signer)
    return task, signer


def test_a_signed_task_runs_and_its_results_are_sealed() -> None:
    task, signer = signed_task("ok", list(range(6)))
    outcome = run_slice(task, 0, 6, signer=signer)
    assert str(outcome.succeeded) == "0-5"
    (key,) = task.list(RESULTS_PREFIX)
    assert task.get(key)[:4] == b"KMS1"
    assert dict(taskdata.iter_results(task, signer)) == {i: 3 * i for i in range(6)}
    assert dict(taskdata.iter_results(task)) == {i: 3 * i for i in range(6)}  # no key: unchecked
    assert str(taskdata.succeeded_indexes(task)) == "0-5"


@pytest.mark.parametrize("damage", ["replaced", "unsigned", "other task's"])
def test_a_planted_fn_pkl_is_refused_before_it_is_unpickled(tmp_path: Path, damage: str) -> None:
    task, signer = signed_task("victim", [1, 2])
    marker = tmp_path / "marker"
    if damage == "other task's":  # a validly signed fn.pkl + fn.mac copied from another task
        other, _ = signed_task("other", [1])
        task.put(FN_KEY, other.get(FN_KEY))
        task.put(signing.FN_MAC, other.get(signing.FN_MAC))
    else:
        task.put(FN_KEY, pickle.dumps(Planted(marker)))
        if damage == "unsigned":
            task.delete_prefix(signing.FN_MAC)
    with pytest.raises(TamperedError, match=r"fn\.pkl of task victim") as info:
        run_slice(task, 0, 2, signer=signer)
    assert not marker.exists()
    assert "submit the task again" in str(info.value)
    cause = infra_cause(info.value)
    assert cause["kind"] == "tampered", cause
    # permanent: the first such report stops the task, whatever else happened
    stop = systematic_cause(
        [Cause(cause["kind"], cause["code"])], any_succeeded=True, parallelism=9
    )
    assert stop is not None and stop.kind == "tampered"


def test_a_planted_input_is_refused_naming_its_index(tmp_path: Path) -> None:
    task, signer = signed_task("inputs", [10, 20, 30])
    marker = tmp_path / "marker"
    planted = open_store(f"memory://planted-{secrets.token_hex(4)}")
    taskdata.write_inputs(planted, [10, Planted(marker), 30])  # same layout, no key
    task.put(INPUTS_KEY, planted.get(INPUTS_KEY))
    task.put("inputs.idx", planted.get("inputs.idx"))
    assert str(run_slice(task, 0, 1, signer=signer).succeeded) == "0"  # item 0 unchanged
    with pytest.raises(TamperedError, match=r"input 1 \(inputs.bin\) of task inputs"):
        run_slice(task, 1, 2, signer=signer)
    assert not marker.exists()
    task.delete_prefix(signing.INPUTS_MAC)
    with pytest.raises(TamperedError, match=r"inputs\.mac is missing"):
        taskdata.read_slice(task, 0, 1, signer=signer)


def test_a_replaced_result_object_is_refused_by_the_reader(tmp_path: Path) -> None:
    task, signer = signed_task("results", [1, 2, 3])
    run_slice(task, 0, 3, signer=signer)
    (key,) = task.list(RESULTS_PREFIX)
    marker = tmp_path / "marker"
    forged = {0: Planted(marker), 1: 1, 2: 2}
    for blob in (
        taskdata.encode_results(forged),  # a plain KMR1 object
        taskdata.encode_results(forged, sealed=True) + bytes(32),  # KMS1 with a made-up MAC
        task.get(key)[:-1] + b"\0",  # one byte of the real one changed
    ):
        task.put(key, blob)
        with pytest.raises(TamperedError, match="result object"):
            list(taskdata.iter_results(task, signer))
    assert not marker.exists()


def test_pods_name_the_key_secret_and_never_carry_a_key() -> None:
    spec = MapTaskSpec.model_validate(
        {"mode": "Function", "count": 4, "store": {"url": "s3://b/runs"}}
    )
    pod = build_pod(TaskRef("sq", "default", "uid-1"), spec, PodRequest(0, 4), SETTINGS)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    ref = env[signing.KEY_ENV]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "sq-key", "key": "key", "optional": True}
    assert "value" not in env[signing.KEY_ENV]
    container = MapTaskSpec.model_validate({"count": 2, "template": {"image": "busybox"}})
    other = build_pod(TaskRef("c", "default", "uid-2"), container, PodRequest(0, 1), SETTINGS)
    assert signing.KEY_ENV not in {e["name"] for e in other["spec"]["containers"][0]["env"]}
    template = worker_template("default", "scorers", WorkerPoolSpec(), SETTINGS)
    pool_env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
    pool_ref = pool_env[signing.POOL_KEY_ENV]["valueFrom"]["secretKeyRef"]
    assert pool_ref["name"] == "kubemap-pool-scorers-key" and "value" not in pool_env


def test_a_pool_worker_checks_the_leased_task_with_the_pool_key(tmp_path: Path) -> None:
    task, signer = signed_task("pooled", [1, 2, 3])
    grant = {"lease_id": "pooled/0-0", "task": "pooled", "task_url": task.url}
    grant |= {"start": 0, "count": 3, "attempt": 0}
    ok = run_lease(grant, FunctionCache(), signer.key)
    assert ok["kind"] == "ok" and ok["succeeded"] == "0-2", ok
    with pytest.raises(NoPoolKey):  # started before the pool's key existed: restart for it
        run_lease(grant, FunctionCache(), None)
    marker = tmp_path / "marker"
    task.put(FN_KEY, pickle.dumps(Planted(marker)))
    report = run_lease(grant | {"attempt": 1}, FunctionCache(), signer.key)
    assert report["kind"] == "infra" and report["cause"]["kind"] == "tampered", report
    assert "fn.pkl of task pooled" in report["why"]
    assert not marker.exists()
