"""`parallelism` is pod (or local worker) concurrency, with one default, decided in
kubemap.core.parallelism; a pool made for a task and the local slicing have their own names."""

from __future__ import annotations

import os
from pathlib import Path

import kubemap
import pytest
import yaml
from kubemap.backends.kubernetes.backend import build_maptask
from kubemap.backends.kubernetes.workerpools import DEFAULT_REPLICAS, new_pool_replicas
from kubemap.backends.local import backend as local
from kubemap.core.parallelism import DEFAULT_PARALLELISM, MAX_PARALLELISM, default_parallelism
from kubemap.core.plan import Rules
from kubemap.core.slicing import ChunkPlanner
from kubemap.errors import ConfigError
from kubemap.resources.maptask import MapTaskSpec
from kubemap.resources.options import RunOptions

CRD = Path(__file__).resolve().parents[2] / "crds" / "maptask.yaml"


def _crd_parallelism() -> dict[str, object]:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return dict(spec["properties"]["parallelism"])


def test_every_pod_default_is_the_one_default() -> None:
    spec = MapTaskSpec(count=1, template={"image": "busybox"})
    assert spec.parallelism == Rules(total=1).parallelism == DEFAULT_PARALLELISM
    assert _crd_parallelism()["default"] == DEFAULT_PARALLELISM
    assert _crd_parallelism()["maximum"] == MAX_PARALLELISM
    body = build_maptask("t", "s3://b/runs/t", 100, RunOptions(backend="kubernetes"))
    assert body["spec"]["parallelism"] == DEFAULT_PARALLELISM


def test_a_pool_task_is_bounded_by_its_pool_not_by_a_default() -> None:
    options = RunOptions(backend="kubernetes", pool="scorers")
    body = build_maptask("t", "s3://b/runs/t", 100, options)
    assert body["spec"]["parallelism"] == MAX_PARALLELISM == default_parallelism(pool=True)
    given = build_maptask("t", "s3://b/runs/t", 100, options.model_copy(update={"parallelism": 7}))
    assert given["spec"]["parallelism"] == 7


@pytest.mark.parametrize(
    ("parallelism", "replicas"), [(None, DEFAULT_REPLICAS), (8, 8), (500, 100)]
)
def test_a_pool_made_for_a_task_has_its_own_size(parallelism: int | None, replicas: int) -> None:
    assert new_pool_replicas(parallelism) == replicas


def test_the_bound_is_the_same_for_options_and_spec() -> None:
    with pytest.raises(ConfigError, match="parallelism"):
        kubemap.map(abs, [1], parallelism=MAX_PARALLELISM + 1)
    with pytest.raises(ValueError):
        MapTaskSpec(count=1, template={"image": "b"}, parallelism=MAX_PARALLELISM + 1)


def test_local_slices_are_cut_for_workers() -> None:
    assert ChunkPlanner(total=100, workers=4).workers == 4


def test_a_local_run_without_parallelism_runs_one_worker_per_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local.os, "cpu_count", lambda: 2)
    pids = kubemap.map(_pid, range(40), store=f"file://{tmp_path}")
    assert 1 <= len(set(pids)) <= 2  # worker processes counted by the PIDs that ran items


def _pid(_: int) -> int:
    return os.getpid()
