"""The Kubernetes backend's key handling, against a recording fake of the cluster client:
the key Secret exists before the MapTask, is owned by it after, and never rides in a spec."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from kubemap.backends.kubernetes import backend as kube
from kubemap.errors import ConfigError
from kubemap.resources.options import RunOptions
from kubemap.task import signing
from kubernetes.client.exceptions import ApiException


class FakeCore:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls
        self.secrets: dict[str, dict[str, Any]] = {}

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.calls.append(("create Secret", body["metadata"]["name"]))
        if body["metadata"]["name"] in self.secrets:
            raise ApiException(status=409)
        self.secrets[body["metadata"]["name"]] = body

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        self.calls.append(("read Secret", name))
        if name not in self.secrets:
            raise ApiException(status=404)
        text = self.secrets[name]["stringData"]["key"]

        body = type("SecretBody", (), {})()
        body.data = {"key": base64.b64encode(text.encode()).decode()}
        return body

    def patch_namespaced_secret(self, name: str, namespace: str, patch: dict[str, Any]) -> None:
        self.calls.append(("own Secret", patch["metadata"]["ownerReferences"][0]["uid"]))

    def delete_namespaced_secret(self, name: str, namespace: str) -> None:
        self.calls.append(("delete Secret", name))


class FakeCluster:
    namespace = "default"
    host = "https://fake"

    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.core = FakeCore(self.calls)
        self.refuse = refuse
        self.bodies: list[dict[str, Any]] = []

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create MapTask", body["metadata"]["name"]))
        self.bodies.append(body)
        if self.refuse:
            raise ConfigError("a MapTask named 't' already exists")
        return {"metadata": {"uid": "uid-9"}}


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    fake = FakeCluster()
    monkeypatch.setattr(kube.Cluster, "connect", classmethod(lambda cls, ns=None: fake))
    return fake


OPTIONS = RunOptions(backend="kubernetes")


class S3Task:
    """Only the URL of the task's prefix matters here: nothing is read or written."""

    url = "s3://bucket/runs/t"


TASK: Any = S3Task()


def test_the_key_secret_comes_first_then_the_maptask_then_ownership(cluster: FakeCluster) -> None:
    backend = kube.KubernetesBackend()
    signer = backend.task_signer("t", OPTIONS)
    handle = backend.start(TASK, 3, OPTIONS, "t")
    assert cluster.calls == [
        ("create Secret", "t-key"),
        ("create MapTask", "t"),
        ("own Secret", "uid-9"),
    ]
    assert handle.signer == signer
    assert cluster.core.secrets["t-key"]["stringData"]["key"] == signer.key.hex()
    assert signer.key.hex() not in json.dumps(cluster.bodies)  # never in the spec


def test_a_refused_maptask_takes_its_key_secret_with_it(cluster: FakeCluster) -> None:
    cluster.refuse = True
    backend = kube.KubernetesBackend()
    backend.task_signer("t", OPTIONS)
    with pytest.raises(ConfigError):
        backend.start(TASK, 3, OPTIONS, "t")
    assert [c[0] for c in cluster.calls] == ["create Secret", "create MapTask", "delete Secret"]


def test_a_pool_key_is_made_once_and_read_after(cluster: FakeCluster) -> None:
    pooled = RunOptions(backend="kubernetes", pool="scorers")
    first = kube.KubernetesBackend().task_signer("a", pooled)
    second = kube.KubernetesBackend().task_signer("b", pooled)
    assert first.key == second.key and (first.task, second.task) == ("a", "b")
    name = signing.pool_secret_name("kubemap-pool-scorers")
    assert cluster.calls == [("read Secret", name), ("create Secret", name), ("read Secret", name)]
