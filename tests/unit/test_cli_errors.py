"""Without a kubeconfig, each surface's error names what to configure and only the
alternative that exists there: a run may go local (backend='local', --backend local), a
WorkerPool may not (there is no local pool to suggest)."""

from __future__ import annotations

from pathlib import Path

import kubemap
import pytest
from click.testing import CliRunner
from kubemap.cli.main import main
from kubernetes.config import kube_config


@pytest.fixture(autouse=True)
def no_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The client reads $KUBECONFIG once, when it is imported: point its default away.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_a_worker_pool_without_a_cluster_suggests_no_local_backend() -> None:
    with pytest.raises(kubemap.ClusterError) as info:
        kubemap.WorkerPool("scorers")
    assert "set KUBECONFIG or ~/.kube/config" in str(info.value)
    assert "backend" not in str(info.value)


@pytest.mark.parametrize("args", [["pool", "list"], ["pool", "scale", "scorers", "2"]])
def test_the_pool_commands_without_a_cluster_say_one_line_without_a_local_hint(
    args: list[str],
) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: no Kubernetes configuration found")
    assert line.endswith("set KUBECONFIG or ~/.kube/config")


def test_a_run_without_a_cluster_still_suggests_the_local_backend() -> None:
    with pytest.raises(kubemap.ClusterError, match=r"or use backend='local'$"):
        kubemap.submit(abs, [1], backend="kubernetes", store="s3://bucket/prefix")


def test_the_cli_says_it_with_its_flag() -> None:
    result = CliRunner().invoke(main, ["get", "t", "--backend", "kubernetes"])
    assert result.exit_code == 1
    assert "--backend local" in result.stderr
