"""Infrastructure causes on the test cluster: surfaced on the MapTask, and a systematic one
(a Secret with wrong S3 keys) stops the task after the first wave of pods."""

from __future__ import annotations

import base64
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubemap
import pytest
from e2ekit import NAMESPACE, PodWatch, opts, wait_phase
from kubemap.backends.kubernetes.backend import build_maptask
from kubemap.resources.options import RunOptions
from kubemap.stores import open_store
from kubemap.task import data as taskdata
from kubemap.task.meta import TaskMeta, write_meta
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


@pytest.fixture
def namespace_without_s3_secret(
    core: client.CoreV1Api, unique: Callable[[str], str]
) -> Iterator[str]:
    """A namespace of this test's own where nobody created the kubemap-s3 Secret."""
    name = unique("nosecret")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(client.exceptions.ApiException):
        core.delete_namespace(name)


def double(x: int) -> int:
    return 2 * x


def test_missing_s3_secret_is_refused_before_submitting(
    custom: client.CustomObjectsApi, namespace_without_s3_secret: str
) -> None:
    """kubemap.map into a namespace without the S3 Secret: refused at once, naming the
    Secret and the command that creates it; no MapTask is left behind."""
    ns = namespace_without_s3_secret
    started = time.monotonic()
    with pytest.raises(kubemap.ConfigError) as info:
        kubemap.map(double, [1, 2], **opts(namespace=ns, timeout=90))
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert 'Secret "kubemap-s3"' in message and f"namespace {ns}" in message, message
    assert f"kubectl create secret generic kubemap-s3 -n {ns}" in message, message
    assert elapsed < 30, elapsed
    listed = custom.list_namespaced_custom_object("kubemap.io", "v1alpha1", ns, "maptasks")
    assert listed["items"] == []


def test_pods_that_cannot_get_their_secret_fail_the_task_naming_it(
    core: client.CoreV1Api, namespace_without_s3_secret: str, unique: Callable[[str], str]
) -> None:
    """A MapTask made without the SDK's check (kubectl apply, or a user who may not read
    Secrets): its pods wait in CreateContainerConfigError; the task fails with the
    missing Secret and the fix named, on the MapTask and in the SDK's error, long before
    any deadline."""
    ns = namespace_without_s3_secret
    name = unique("nosecret")
    base = os.environ["KUBEMAP_STORE"]
    task = open_store(base).child(name)
    taskdata.write_function(task, double)
    total = taskdata.write_inputs(task, [1, 2])
    write_meta(task, TaskMeta.new(total, "test:double"))
    body = build_maptask(name, task.url, total, RunOptions(timeout=90, retries=2))
    started = time.monotonic()
    custom = client.CustomObjectsApi(core.api_client)
    custom.create_namespaced_custom_object("kubemap.io", "v1alpha1", ns, "maptasks", body)
    deadline = started + 120
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        got = custom.get_namespaced_custom_object("kubemap.io", "v1alpha1", ns, "maptasks", name)
        status = got.get("status") or {}
        if status.get("phase") in ("Failed", "Succeeded"):
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    assert status.get("phase") == "Failed", status
    assert status["conditions"][-1]["reason"] == "SystematicFailure", status
    message = status["message"]
    assert 'secret "kubemap-s3" not found' in message, message
    assert f"kubectl create secret generic kubemap-s3 -n {ns}" in message, message
    assert elapsed < 60, f"the task took {elapsed:.0f}s to fail (its deadline is 90s)"
    run = kubemap.MapRun.attach(name, backend="kubernetes", namespace=ns, store=base)
    with pytest.raises(kubemap.MapTaskError) as info:
        run.results()
    assert 'secret "kubemap-s3" not found' in str(info.value), str(info.value)
    assert "kubectl create secret generic kubemap-s3" in str(info.value)
