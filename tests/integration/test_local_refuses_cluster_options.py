"""Kubernetes-only options on the local backend are refused, not ignored (issue 18, item
11): a user who forgets backend= must not believe their pool or image ran the work. Every
surface (map, submit, imap, Executor, joblib, the CLI) gets the same answer, and nothing
runs: the function counts its calls."""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubemap
import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
KUBEMAP_RUN = [sys.executable, "-m", "kubemap", "run"]

CLUSTER_ONLY: list[dict[str, Any]] = [
    {"pool": "big"},
    {"image": "registry.example/me:1"},
    {"namespace": "team-a"},
    {"node_selector": {"gpu": "yes"}},
    {"tolerations": [{"key": "gpu", "operator": "Exists"}]},
    {"service_account": "runner"},
    {"resources": {"limits": {"cpu": "2"}}},
    {"store_endpoint": "http://minio:9000"},
    {"env": {"MODEL": "small"}},
]


def counted(log: str, x: int) -> int:
    with open(log, "a") as out:
        out.write(f"{x}\n")
    return x


def calls(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


@pytest.mark.parametrize("option", CLUSTER_ONLY, ids=lambda o: next(iter(o)))
def test_every_python_surface_refuses_and_runs_nothing(
    tmp_path: Path, option: dict[str, Any]
) -> None:
    log, store = tmp_path / "log", str(tmp_path / "store")
    fn = functools.partial(counted, str(log))
    name = next(iter(option))
    attempts = [
        lambda: kubemap.map(fn, [1, 2], store=store, **option),
        lambda: kubemap.submit(fn, [1, 2], store=store, **option),
        lambda: list(kubemap.imap(fn, [1, 2], store=store, **option)),
        lambda: kubemap.map(fn, [1, 2], store=store, backend="local", cache=True, **option),
        lambda: kubemap.Executor(store=store, **option),
    ]
    refused = 0
    for attempt in attempts:
        with pytest.raises(kubemap.ConfigError) as info:
            attempt()
        assert f"{name}=" in str(info.value) and 'backend="kubernetes"' in str(info.value)
        refused += 1
    assert refused == len(attempts) and calls(log) == 0


def test_the_refusal_names_every_cluster_option_given() -> None:
    with pytest.raises(kubemap.ConfigError) as info:
        kubemap.submit(abs, [1], pool="big", image="img:1")
    message = str(info.value)
    assert "pool='big'" in message and "image='img:1'" in message
    assert "local" in message and "invalid option options=" not in message


def test_joblib_refuses_cluster_options_locally(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    importlib.import_module("kubemap.joblib_backend")  # registers "kubemap"
    log = tmp_path / "log"
    with (
        pytest.raises(kubemap.ConfigError, match=r'pool=.*backend="kubernetes"'),
        joblib.parallel_config(backend="kubemap", store=str(tmp_path), pool="big", n_jobs=2),
    ):
        joblib.Parallel()(joblib.delayed(counted)(str(log), i) for i in range(3))
    assert calls(log) == 0


def test_cli_run_refuses_pool_without_backend(tmp_path: Path) -> None:
    log = tmp_path / "log"
    (tmp_path / "fns.py").write_text(
        f"def f(x):\n    open({str(log)!r}, 'a').write('x\\n')\n    return x\n"
    )
    done = subprocess.run(
        [*KUBEMAP_RUN, f"{tmp_path / 'fns.py'}:f", "--inputs", "-", "--pool", "big"],
        input="1\n2\n",
        capture_output=True,
        text=True,
        env={**os.environ, "KUBEMAP_STORE": str(tmp_path / "store")},
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    # in the CLI's own words (--pool, --backend kubernetes) or the SDK's (pool=, backend=)
    assert "pool" in done.stderr and "Kubernetes" in done.stderr
    assert "--backend kubernetes" in done.stderr or 'backend="kubernetes"' in done.stderr
    assert done.stdout == "" and calls(log) == 0


def test_the_kubernetes_backend_still_takes_them() -> None:
    options = kubemap.RunOptions(backend="kubernetes", pool="big", image="img:1", env={"A": "1"})
    assert (options.pool, options.image) == ("big", "img:1")
