"""A failed local run's data is kept, says where, and goes after the retention period or on
`kubemap gc`; successful runs and stores the user chose are never swept."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import kubemap
import pytest
from kubemap.stores import open_store
from kubemap.task import retention
from kubemap.task.meta import read_meta, write_meta

pytestmark = pytest.mark.timeout(120)


def fails_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubemap", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        input="1\n2\n3\n",
    )


def age(store_url: str, name: str, days: float) -> None:
    task = open_store(store_url).child(name)
    meta = read_meta(task)
    created = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    write_meta(task, dataclasses.replace(meta, created=created.isoformat(timespec="seconds")))


@pytest.fixture
def home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The built-in default store, under a private XDG_CACHE_HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("KUBEMAP_STORE", raising=False)
    monkeypatch.delenv(retention.ENV_RETENTION_DAYS, raising=False)
    return retention.builtin_store_url()


def test_failed_cli_run_says_where_its_data_is_kept_and_gc_removes_it(
    tmp_path: Path, home_cache: str
) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    (tmp_path / "tasks.py").write_text(
        "def f(x):\n    if x == 2:\n        raise ValueError('two')\n    return x\n"
    )
    run = cli("run", f"{tmp_path / 'tasks.py'}:f", "--inputs", "-", "--name", "kept-task", env=env)
    assert run.returncode == 1
    assert f"its data stays in {home_cache}/kept-task for 7 days" in run.stderr
    assert "`kubemap gc` removes it now" in run.stderr
    root = Path(home_cache.removeprefix("file://"))
    assert (root / "kept-task").is_dir()

    gc = cli("gc", env=env)  # younger than 7 days: kept
    assert gc.returncode == 0 and "removed 0 task(s)" in gc.stdout and "1 newer" in gc.stdout
    gc = cli("gc", "--older-than", "0", env=env)
    assert gc.returncode == 0 and "removed 1 task(s)" in gc.stdout, gc.stderr
    assert not (root / "kept-task").exists()


def test_the_next_submit_to_the_default_store_removes_expired_tasks(home_cache: str) -> None:
    for name in ("old-fail", "new-fail"):
        with pytest.raises(kubemap.MapTaskError):
            kubemap.map(fails_on_two, [1, 2, 3], name=name)
    age(home_cache, "old-fail", days=8)
    assert kubemap.map(fails_on_two, [1]) == [1]
    root = Path(home_cache.removeprefix("file://"))
    assert sorted(p.name for p in root.iterdir()) == ["new-fail"]


def test_a_store_the_user_chose_is_never_swept(tmp_path: Path, home_cache: str) -> None:
    mine = (tmp_path / "mine").as_uri()
    with pytest.raises(kubemap.MapTaskError):
        kubemap.map(fails_on_two, [1, 2, 3], name="precious", store=mine)
    age(mine, "precious", days=30)
    kubemap.map(fails_on_two, [1], store=mine)
    assert (tmp_path / "mine" / "precious").is_dir()


def test_gc_refuses_s3_stores_with_a_hint() -> None:
    done = cli("gc", "--store", "s3://bucket/tasks", env={})
    assert done.returncode == 2 and "lifecycle rule" in done.stderr
