"""One Kubernetes submit connects to the cluster once and reads its WorkerPool once (issue
19): `kubemap.submit(..., backend="kubernetes", pool=...)` against a recording fake of the
API server, with the real `Cluster.connect` (counted) and a real S3 store for the upload.

No store and no image are given, so the submit also reads the chart's defaults (the
kubemap-defaults ConfigMap): the path that used to connect the most."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubemap
import pytest
from kubemap.backends import get_backend
from kubemap.backends.kubernetes import client as kubeclient
from kubemap.backends.kubernetes.backend import KubernetesBackend
from kubemap.backends.kubernetes.workerpools import PoolCreatedWarning
from kubemap.resources.options import RunOptions
from kubemap.resources.workerpool import POOL_PLURAL, python_minor
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config

pytestmark = pytest.mark.timeout(60)

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: me, user: {token: not-a-secret}}]
contexts: [{name: fake, context: {cluster: fake, user: me, namespace: team}}]
current-context: fake
"""


def square(x: int) -> int:
    return x * x


class FakeApi:
    """The custom-object and core calls a submit makes, answered from memory and counted
    as (verb, resource) pairs."""

    def __init__(self, store_url: str) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.defaults = {"defaultStore": store_url, "workerPython": python_minor()}

    # custom objects (MapTasks, WorkerPools)
    def get_namespaced_custom_object(self, g: str, v: str, ns: str, plural: str, name: str) -> Any:
        self.calls["get", plural] += 1
        if (plural, name) not in self.objects:
            raise ApiException(status=404)
        return self.objects[plural, name]

    def list_namespaced_custom_object(self, g: str, v: str, ns: str, plural: str, **kw: Any) -> Any:
        self.calls["list", plural] += 1
        return {"items": [o for (p, _), o in self.objects.items() if p == plural]}

    def create_namespaced_custom_object(
        self, g: str, v: str, ns: str, plural: str, body: dict[str, Any]
    ) -> Any:
        self.calls["create", plural] += 1
        name = body["metadata"]["name"]
        if (plural, name) in self.objects:
            raise ApiException(status=409)
        made = {**body, "metadata": {**body["metadata"], "uid": f"uid-{plural}-{name}"}}
        self.objects[plural, name] = made
        return made

    # core (the chart's ConfigMap, key Secrets)
    def read_namespaced_config_map(self, name: str, ns: str) -> Any:
        self.calls["get", "configmaps"] += 1
        return SimpleNamespace(data=self.defaults)

    def read_namespaced_secret(self, name: str, ns: str) -> Any:
        self.calls["get", "secrets"] += 1
        if name not in self.secrets:
            raise ApiException(status=404)
        key = self.secrets[name]["stringData"]["key"]
        return SimpleNamespace(data={"key": base64.b64encode(key.encode()).decode()})

    def create_namespaced_secret(self, ns: str, body: dict[str, Any]) -> None:
        self.calls["create", "secrets"] += 1
        self.secrets[body["metadata"]["name"]] = body

    def patch_namespaced_secret(self, name: str, ns: str, patch: dict[str, Any]) -> None:
        self.calls["patch", "secrets"] += 1

    def delete_namespaced_secret(self, name: str, ns: str) -> None:
        self.calls["delete", "secrets"] += 1


@pytest.fixture
def api(
    s3_store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeApi, Counter[str]]:
    """The fake API server, and a counter of the real Cluster.connect's calls."""
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG)
    # The client reads $KUBECONFIG once, when it is imported: point its default there.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
    for name in ("KUBEMAP_STORE", "KUBEMAP_OPERATOR_NAMESPACE", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeApi(s3_store_url)
    connects: Counter[str] = Counter()
    real_connect = kubeclient.Cluster.connect.__func__  # type: ignore[attr-defined]

    def counted(cls: type, namespace: str | None = None, context: str | None = None) -> Any:
        connects["connect"] += 1
        return real_connect(cls, namespace, context)

    monkeypatch.setattr(kubeclient.Cluster, "connect", classmethod(counted))
    monkeypatch.setattr(kubeclient.Cluster, "custom", property(lambda self: fake))
    monkeypatch.setattr(kubeclient.Cluster, "core", property(lambda self: fake))

    def secret_exists(self: Any, name: str) -> bool:
        fake.calls["get", "secrets"] += 1
        return True

    monkeypatch.setattr(kubeclient.Cluster, "secret_exists", secret_exists)
    return fake, connects


def _pool(fake: FakeApi, name: str) -> None:
    fake.objects[POOL_PLURAL, name] = {
        "metadata": {"name": name, "uid": "uid-pool"},
        "status": {"pythonVersion": python_minor()},
    }


def test_a_pool_submit_reads_its_pool_once(api: tuple[FakeApi, Counter[str]]) -> None:
    fake, _ = api
    _pool(fake, "scorers")
    run = kubemap.submit(square, range(5), backend="kubernetes", pool="scorers")
    assert fake.calls["get", POOL_PLURAL] == 1
    assert fake.calls["create", POOL_PLURAL] == 0
    assert fake.calls["create", "maptasks"] == 1
    assert ("maptasks", run.name) in fake.objects


def test_a_submit_to_a_missing_pool_reads_it_once_and_creates_it(
    api: tuple[FakeApi, Counter[str]],
) -> None:
    fake, _ = api
    with pytest.warns(PoolCreatedWarning):
        kubemap.submit(square, range(5), backend="kubernetes", pool="fresh")
    assert fake.calls["get", POOL_PLURAL] == 1
    assert fake.calls["create", POOL_PLURAL] == 1
    assert fake.calls["patch", "secrets"] == 1  # the pool key, owned by the pool just made


@pytest.mark.parametrize("pool", [None, "scorers"], ids=["pods", "pool"])
def test_the_backend_steps_of_a_submit_share_one_connection(
    api: tuple[FakeApi, Counter[str]], pool: str | None
) -> None:
    """The steps api/prepare.py and submit run, in their order, on one backend."""
    fake, connects = api
    _pool(fake, "scorers")
    options = RunOptions(backend="kubernetes", pool=pool)
    backend = get_backend("kubernetes")
    found = backend.discover(options)
    assert found is not None
    backend.preflight(found.url, options)
    assert isinstance(backend, KubernetesBackend)
    backend.task_signer("t", options)
    backend.start(found.child("t"), 3, options, "t")
    assert connects["connect"] == 1
    assert fake.calls["get", "configmaps"] == 1  # the chart's defaults, read once too
    assert fake.calls["get", POOL_PLURAL] == (1 if pool else 0)
    assert fake.calls["create", "maptasks"] == 1


@pytest.mark.parametrize("pool", [None, "scorers"], ids=["pods", "pool"])
def test_a_submit_connects_once(api: tuple[FakeApi, Counter[str]], pool: str | None) -> None:
    fake, connects = api
    _pool(fake, "scorers")
    kubemap.submit(square, range(5), backend="kubernetes", pool=pool)
    assert connects["connect"] == 1
    assert fake.calls["get", "configmaps"] == 1
