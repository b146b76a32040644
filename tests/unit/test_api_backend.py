"""Backend selection: local by default, kubemap.backends.kubernetes.backend imported only for backend='kubernetes'."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import kubemap
import pytest
from kubemap.backends import Backend, get_backend
from kubemap.backends.local.backend import LocalBackend
from kubemap.core.status import RunStatus
from kubemap.errors import ConfigError
from kubemap.resources.maptask import Phase


def test_local_is_the_default_backend() -> None:
    backend = get_backend("local")
    assert isinstance(backend, LocalBackend)
    assert isinstance(backend, Backend)


def test_a_local_run_never_imports_the_kubernetes_client(tmp_path: Path) -> None:
    # A fresh interpreter: in this one, other tests may have imported kubernetes already.
    code = (
        "import sys, kubemap\n"
        f"out = kubemap.map(abs, [-1, -2, 3], store={str(tmp_path)!r}, parallelism=2)\n"
        "assert out == [1, 2, 3], out\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('kubernetes', 'kopf', 'boto3', 'botocore'))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_the_kubernetes_backend_module_is_chosen_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeKube:
        name = "kubernetes"

    module = types.ModuleType("kubemap.backends.kubernetes.backend")
    module.KubernetesBackend = FakeKube  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kubemap.backends.kubernetes.backend", module)
    assert isinstance(get_backend("kubernetes"), FakeKube)


def test_missing_kubernetes_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "kubemap.backends.kubernetes.backend", None
    )  # import raises ModuleNotFoundError
    with pytest.raises(ConfigError, match="backend='kubernetes' is not available"):
        get_backend("kubernetes")


def test_unknown_backend() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'nope'"):
        get_backend("nope")


@pytest.mark.parametrize(
    ("status", "pending", "finished"),
    [
        (RunStatus(Phase.RUNNING, 10, succeeded=3, failed=1, active=2), 4, False),
        (RunStatus(Phase.SUCCEEDED, 10, succeeded=10), 0, True),
        (RunStatus(Phase.CANCELLED, 10, succeeded=2), 8, True),
    ],
)
def test_run_status(status: RunStatus, pending: int, finished: bool) -> None:
    assert status.pending == pending
    assert status.finished is finished


def test_kubernetes_run_refuses_a_local_store_before_uploading(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(ConfigError, match=r"needs an S3 store"):
        kubemap.submit(abs, [1, 2], backend="kubernetes", store=f"file://{store}")
    assert not store.exists() or not any(store.rglob("*.pkl"))


def test_kubernetes_run_with_no_cluster_names_the_problem_before_uploading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    uploads: list[str] = []
    import kubemap.api.maprun as api

    monkeypatch.setattr(api, "open_store", lambda url: uploads.append(url))
    with pytest.raises(kubemap.ClusterError, match=r"KUBECONFIG"):
        kubemap.submit(abs, [1, 2], backend="kubernetes", store="s3://bucket/prefix")
    assert uploads == []  # the preflight stopped it before the store was even opened
