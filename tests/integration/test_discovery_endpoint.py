"""A Kubernetes submit with no store given uploads to the chart's default store through the
chart's S3 endpoint (ConfigMap kubemap-defaults), without writing it, or anything else, into
the caller's os.environ: a library must not change its caller's environment.

No cluster runs here: the ConfigMap (a fake cluster answers it) and the calls that need
an API server (preflight, the signer's pool key, creating the MapTask) are replaced; the
upload goes to a real SeaweedFS that only the discovered endpoint reaches."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import kubemap
import pytest
from kubemap.backends.kubernetes.backend import KubernetesBackend
from kubemap.backends.kubernetes.client import Cluster
from kubemap.backends.kubernetes.discovery import ClusterDefaults
from kubemap.contract import FN_KEY, INDEX_KEY, INPUTS_KEY, META_KEY
from kubemap.task.signing import Signer, new_key

pytestmark = pytest.mark.timeout(120)

ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


class Started(Exception):
    """Raised where the MapTask would be created: everything before it has run."""


class ChartCluster:
    """A cluster whose only object is the chart's kubemap-defaults ConfigMap."""

    def __init__(self, defaults: ClusterDefaults) -> None:
        self.namespace = defaults.namespace
        data = {"defaultStore": defaults.store, "s3Endpoint": defaults.s3_endpoint}
        data["s3Region"] = defaults.s3_region
        self.core = SimpleNamespace(
            read_namespaced_config_map=lambda name, ns: SimpleNamespace(data=data)
        )

    def call(self, what: str, fn: Any, *args: Any) -> Any:
        return fn(*args)


def published(monkeypatch: pytest.MonkeyPatch, defaults: ClusterDefaults) -> None:
    """The SDK's connect (wherever a submit makes it) reaches a cluster publishing `defaults`."""
    fake = ChartCluster(defaults)
    monkeypatch.setattr(Cluster, "connect", classmethod(lambda cls, namespace=None: fake))


@pytest.fixture
def chart(s3_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[str, list[Any]]:
    """A chart whose defaults point at SeaweedFS; the caller has credentials, no endpoint."""
    for name in (*ENDPOINT_VARS, "KUBEMAP_STORE", "AWS_PROFILE", "KUBEMAP_OPERATOR_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    store = f"s3://{s3_server.bucket}/chart-{uuid.uuid4().hex[:10]}"
    defaults = ClusterDefaults(
        "kubemap-system", store, s3_server.endpoint, s3_server.region, "", ""
    )
    published(monkeypatch, defaults)
    started: list[Any] = []

    def start(self: Any, task: Any, total: int, options: Any, name: str) -> Any:
        started.append(task)
        raise Started(name)

    monkeypatch.setattr(KubernetesBackend, "preflight", lambda self, url, options: None)
    monkeypatch.setattr(
        KubernetesBackend, "task_signer", lambda self, name, options: Signer(name, new_key())
    )
    monkeypatch.setattr(KubernetesBackend, "start", start)
    return store, started


def objects(server: Any, prefix: str) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
    )
    listing = client.list_objects_v2(Bucket=server.bucket, Prefix=prefix)
    return sorted(obj["Key"][len(prefix) :] for obj in listing.get("Contents", ()))


def test_a_kubernetes_submit_uploads_through_the_charts_endpoint_and_leaves_environ_alone(
    chart: tuple[str, list[Any]], s3_server: Any
) -> None:
    store, started = chart
    before = dict(os.environ)
    with pytest.raises(Started) as raised:
        kubemap.submit(abs, [-1, -2, -3], backend="kubernetes")
    assert dict(os.environ) == before
    name = str(raised.value)
    [task] = started
    assert task.url == f"{store}/{name}"
    prefix = store.removeprefix(f"s3://{s3_server.bucket}/") + f"/{name}/"
    uploaded = objects(s3_server, prefix)
    assert {FN_KEY, INDEX_KEY, INPUTS_KEY, META_KEY} <= set(uploaded), uploaded
    assert task.exists(META_KEY)  # the run's own store object keeps reaching it


def test_an_endpoint_the_caller_configured_still_wins(
    chart: tuple[str, list[Any]], monkeypatch: pytest.MonkeyPatch, s3_server: Any
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    store, started = chart
    published(
        monkeypatch, ClusterDefaults("kubemap-system", store, "http://127.0.0.1:9", "", "", "")
    )
    before = dict(os.environ)
    with pytest.raises(Started):
        kubemap.submit(abs, [-1], backend="kubernetes")
    assert dict(os.environ) == before
    assert started[0].exists(META_KEY)  # uploaded through the caller's endpoint, not :9
