"""The chart publishes its defaults in the ConfigMap kubemap-defaults, readable by everyone
for that one object; the SDK turns them into a store and a Python check before submitting."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import chartkit as ck
from kubemap.backends.kubernetes.discovery import (
    ChartStore,
    ClusterDefaults,
    check_submit,
)
from kubemap.errors import ConfigError
from kubemap.stores.s3 import S3Store
from kubemap.task.meta import image_python, minor

KIND = {
    "image.repository": "kubemap",
    "image.tag": "dev",
    "s3.endpoint": "http://seaweedfs.kubemap-system:8333",
    "s3.defaultStore": "s3://kubemap/tasks",
    "s3.existingSecret": "kubemap-s3",
}
HERE = minor(platform.python_version())


def test_chart_publishes_store_endpoint_image_and_python() -> None:
    objs = ck.render(KIND)
    [cm] = [o for o in ck.by_kind(objs, "ConfigMap") if o["metadata"]["name"] == "kubemap-defaults"]
    defaults = ClusterDefaults.from_data(cm["metadata"]["namespace"], cm["data"])
    assert defaults.store == "s3://kubemap/tasks"
    assert defaults.s3_endpoint == "http://seaweedfs.kubemap-system:8333"
    assert defaults.worker_image == "kubemap:dev" and defaults.worker_python == "3.11"
    assert "secret" not in " ".join(cm["data"].values()).lower().replace("kubemap-s3", "")


def test_everyone_may_read_that_one_configmap_and_nothing_else() -> None:
    objs = ck.render(KIND)
    [role] = [
        o for o in ck.by_kind(objs, "Role") if o["metadata"]["name"] == "kubemap-defaults-reader"
    ]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["kubemap-defaults"],
            "verbs": ["get"],
        }
    ]
    [binding] = [
        o
        for o in ck.by_kind(objs, "RoleBinding")
        if o["metadata"]["name"] == "kubemap-defaults-reader"
    ]
    assert binding["subjects"][0]["name"] == "system:authenticated"


def test_discovery_off_publishes_nothing() -> None:
    objs = ck.render({**KIND, "discovery.enabled": "false"})
    assert not [o for o in objs if "kubemap-defaults" in o["metadata"]["name"]]


def test_notes_never_say_pip_install_kubemap() -> None:
    done = ck.run(
        [
            ck.helm_bin(),
            "install",
            "kubemap",
            str(ck.CHART),
            "--dry-run=client",
            "-n",
            "kubemap-system",
            *ck.set_args(KIND),
        ]
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "pip install kubemap" not in notes
    assert "git+https://github.com/kubemap/kubemap" in notes
    assert 'backend="kubernetes")' in notes  # no store needed: the ConfigMap gives it


def first(published: list[ClusterDefaults]) -> ClusterDefaults | None:
    return published[0] if published else None


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[ClusterDefaults]:
    found: list[ClusterDefaults] = []
    for name in ("KUBEMAP_STORE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    return found


def test_no_store_given_uses_the_charts_default_and_endpoint(
    published: list[ClusterDefaults],
) -> None:
    import os

    published.append(
        ClusterDefaults(
            "kubemap-system", "s3://kubemap/tasks", "http://s3.local:8333", "eu-west-3", "", HERE
        )
    )
    before = dict(os.environ)
    found = check_submit(None, None, lambda: first(published))
    assert found == ChartStore("s3://kubemap/tasks", "http://s3.local:8333", "eu-west-3")
    store = found.open()
    assert isinstance(store, S3Store)
    assert (store.url, store.endpoint_url, store.region) == (
        "s3://kubemap/tasks",
        "http://s3.local:8333",
        "eu-west-3",
    )
    task = store.child("t-1")  # what the upload writes to keeps the chart's endpoint
    assert (task.url, task.endpoint_url, task.region) == (
        "s3://kubemap/tasks/t-1",
        "http://s3.local:8333",
        "eu-west-3",
    )
    assert str(task.client.meta.endpoint_url) == "http://s3.local:8333"
    assert task.client.meta.region_name == "eu-west-3"
    assert dict(os.environ) == before  # a library never writes its caller's environment


def test_a_given_store_or_endpoint_wins(
    published: list[ClusterDefaults], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    published.append(
        ClusterDefaults(
            "kubemap-system", "s3://kubemap/tasks", "http://s3.local:8333", "", "", HERE
        )
    )
    assert check_submit("s3://mine/x", None, lambda: first(published)) is None
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    found = check_submit(None, None, lambda: first(published))
    assert found == ChartStore("s3://kubemap/tasks")  # the caller's own endpoint is used
    assert str(found.open().child("t").client.meta.endpoint_url) == "http://127.0.0.1:9000"
    assert os.environ["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9000"


def test_the_cluster_image_with_another_python_is_refused_at_submit(
    published: list[ClusterDefaults],
) -> None:
    published.append(ClusterDefaults("kubemap-system", "s3://k/t", "", "", "me/kubemap:1", "3.2"))
    with pytest.raises(ConfigError, match=rf"Python 3\.2 but this SDK runs Python {HERE}"):
        check_submit(None, None, lambda: first(published))


def test_an_image_naming_another_python_is_refused_before_any_lookup(
    published: list[ClusterDefaults],
) -> None:
    with pytest.raises(ConfigError, match=r"image python:3\.2-slim runs Python 3\.2"):
        check_submit("s3://k/t", "python:3.2-slim", lambda: first(published))
    assert check_submit("s3://k/t", f"python:{HERE}-slim", lambda: first(published)) is None


@pytest.mark.parametrize(
    ("image", "python"),
    [
        ("python:3.12-slim", "3.12"),
        ("docker.io/library/python:3.11", "3.11"),
        ("registry.example/me/app:1.0-py3.12", "3.12"),
        ("kubemap:0.1.0-py311", "3.11"),
        ("ghcr.io/kubemap/kubemap:0.1.0", None),
        ("busybox:1.36", None),
        ("registry:5000/python-tools:2", None),
    ],
)
def test_image_python_reads_only_what_the_name_announces(image: str, python: str | None) -> None:
    assert image_python(image) == python
