"""Infrastructure causes on the test cluster: surfaced on the MapTask, and a systematic one
(a Secret with wrong S3 keys) stops the task after the first wave of pods."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator

import kubemap
import pytest
from e2ekit import NAMESPACE, PodWatch, wait_phase
from kubemap import taskdata
from kubemap.backends.kubernetes import build_maptask
from kubemap.models import RunOptions
from kubemap.stores import open_store
from kubemap.taskmeta import TaskMeta, write_meta
from kubernetes import client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed", "operator"),
]


@pytest.fixture
def wrong_keys_secret(core: client.CoreV1Api, unique: Callable[[str], str]) -> Iterator[str]:
    name = unique("bad-keys")
    data = {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "not-the-key"}
    core.create_namespaced_secret(
        NAMESPACE,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        ),
    )
    yield name
    core.delete_namespaced_secret(name, NAMESPACE)


def test_wrong_s3_keys_fail_fast_with_the_cause_named(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    wrong_keys_secret: str,
) -> None:
    name = unique("badkeys")
    base = os.environ["KUBEMAP_STORE"]
    task = open_store(base).child(name)
    taskdata.write_function(task, abs)
    total = taskdata.write_inputs(task, range(-20, 0))
    write_meta(task, TaskMeta.new(total, "builtins:abs"))
    body = build_maptask(name, task.url, total, RunOptions(parallelism=4, retries=3))
    body["spec"]["store"]["secretName"] = wrong_keys_secret
    with PodWatch(core, name) as pods:
        custom.create_namespaced_custom_object(
            "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", body
        )
        done = wait_phase(custom, name, {"Failed", "Succeeded"}, timeout=240)
    status = done["status"]
    assert status["phase"] == "Failed"
    assert status["conditions"][-1]["reason"] == "SystematicFailure"
    assert "store error" in status["message"] and "S3 Secret" in status["message"]
    assert status["notRun"] == 20 and status["succeeded"] == 0
    assert len(pods.seen) <= 8, sorted(pods.seen)  # parallelism 4: at most two waves spent
    run = kubemap.MapRun.attach(name, backend="kubernetes", namespace=NAMESPACE)
    with pytest.raises(kubemap.MapTaskError) as info:
        run.results()
    assert "S3 Secret" in str(info.value) and "20 not run" in str(info.value)
