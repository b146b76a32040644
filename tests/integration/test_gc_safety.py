"""`kubemap gc` and the sweep at submit remove only tasks kubemap wrote and can prove it wrote
(task.json of kubemap's shape, and nothing but kubemap's files beside it); they never follow
a link, never touch the per-item cache as a task, and say what they removed and what they kept.

Every test compares the store's whole tree (paths, kinds, contents) before and after, so a
file gc should have left alone and did not is something the test can see."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import kubemap
import pytest
from kubemap.task import retention

pytestmark = pytest.mark.timeout(180)

DAY = 86400.0


def fails_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubemap", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def tree(root: Path) -> dict[str, str]:
    """Every path below root (links not followed): 'link -> target', 'dir' or a digest."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def failed_task(store: Path, name: str) -> Path:
    with pytest.raises(kubemap.MapTaskError):
        kubemap.map(fails_on_two, [1, 2, 3], name=name, store=str(store))
    assert (store / name / "task.json").is_file()
    return store / name


def backdate(path: Path, days: float) -> None:
    when = time.time() - days * DAY
    os.utime(path, (when, when), follow_symlinks=False)


def test_gc_leaves_a_directory_that_is_not_a_task(tmp_path: Path) -> None:
    """The issue's reproduction: `mkdir -p d/photos; echo x > d/photos/a.jpg; kubemap gc
    --store d --older-than 0` printed "removed 2 task(s)" and emptied d/."""
    store = tmp_path / "d"
    (store / "photos").mkdir(parents=True)
    (store / "photos" / "a.jpg").write_text("x\n")
    before = tree(store)
    done = cli("gc", "--store", str(store), "--older-than", "0")
    assert done.returncode == 0, done.stderr
    assert tree(store) == before
    assert "removed 0 task(s)" in done.stdout
    assert "kept photos: not a kubemap task (no task.json)" in done.stdout


def test_gc_removes_only_kubemap_tasks_and_says_why_it_kept_the_rest(tmp_path: Path) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    doomed = failed_task(store, "doomed")
    other = failed_task(elsewhere, "outside")  # a real task, reached through a link
    (store / "link-to-task").symlink_to(other, target_is_directory=True)
    failed_task(store, "annotated")
    (store / "annotated" / "notes.txt").write_text("my notes on this run\n")
    failed_task(store, "linked-result")
    (tmp_path / "precious.txt").write_text("keep me\n")
    results = store / "linked-result" / "results"
    (results / "000000000009-1").symlink_to(tmp_path / "precious.txt")
    foreign = store / "project"
    foreign.mkdir()
    (foreign / "task.json").write_text(json.dumps({"name": "my project", "total": 3}))
    (foreign / "results").mkdir()
    (foreign / "results" / "summary.csv").write_text("a,b\n")
    backdate(foreign / "task.json", 30)
    backdate(foreign, 30)
    (store / "README").write_text("my store\n")
    cached = kubemap.submit(abs, [-1, -2], cache=True, store=str(store))
    assert cached.results() == [1, 2]
    cache_entries = [p for p in (store / "_cache").rglob("*") if p.is_file()]
    assert len(cache_entries) == 2
    ours = {"doomed"} | {p.name for p in store.iterdir() if (p / "cache.json").is_file()}
    assert len(ours) == 2  # the failed task, and the cached run's own task
    keep = {k: v for k, v in tree(store).items() if k.split("/")[0] not in ours}
    outside = tree(elsewhere)

    done = cli("gc", "--store", str(store), "--older-than", "0")

    assert done.returncode == 0, done.stderr
    assert not doomed.exists()
    assert tree(store) == keep
    assert tree(elsewhere) == outside
    assert (tmp_path / "precious.txt").read_text() == "keep me\n"
    out = done.stdout
    assert "removed doomed" in out
    assert "removed 2 task(s)" in out
    assert "kept link-to-task: a symbolic link (gc never follows links)" in out
    assert "kept annotated: holds notes.txt, which kubemap does not write" in out
    assert "kept linked-result: results/000000000009-1 is a symbolic link" in out
    assert "kept project: its task.json is not kubemap's" in out
    assert "kept README: not a directory" in out
    assert "kept _cache: the per-item cache" in out
    assert "_cache" not in out.split("kept _cache")[0]  # never counted nor removed as a task


def test_dry_run_lists_what_would_go_and_removes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    failed_task(store, "first")
    failed_task(store, "second")
    (store / "photos").mkdir()
    before = tree(store)
    done = cli("gc", "--store", str(store), "--older-than", "0", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert tree(store) == before
    assert "would remove first" in done.stdout and "would remove second" in done.stdout
    assert "would remove 2 task(s)" in done.stdout
    assert "kept photos: not a kubemap task" in done.stdout


def test_the_sweep_at_submit_leaves_old_directories_that_are_not_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("KUBEMAP_STORE", raising=False)
    monkeypatch.delenv(retention.ENV_RETENTION_DAYS, raising=False)
    root = Path(retention.builtin_store_url().removeprefix("file://"))
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "a.jpg").write_text("x\n")
    backdate(root / "photos" / "a.jpg", 30)
    backdate(root / "photos", 30)
    old = failed_task(root, "old-fail")
    meta = json.loads((old / "task.json").read_text())
    meta["created"] = (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).isoformat()
    (old / "task.json").write_text(json.dumps(meta))
    assert kubemap.map(fails_on_two, [1]) == [1]
    assert not old.exists()  # an expired task does go
    assert (root / "photos" / "a.jpg").read_text() == "x\n"


def _link_meta(task: Path, tmp: Path) -> None:
    real = tmp / "real-task.json"
    real.write_bytes((task / "task.json").read_bytes())
    (task / "task.json").unlink()
    (task / "task.json").symlink_to(real)


def _link_results(task: Path, tmp: Path) -> None:
    outside = tmp / "outside-results"
    outside.mkdir()
    (outside / "000000000000-1").write_text("not kubemap's")
    for old in (task / "results").iterdir():
        old.unlink()
    (task / "results").rmdir()
    (task / "results").symlink_to(outside, target_is_directory=True)


def _dir_for_a_file(task: Path, tmp: Path) -> None:
    (task / "fn.pkl").unlink()
    (task / "fn.pkl").mkdir()
    (task / "fn.pkl" / "mine.txt").write_text("x")


def _nested_foreign(task: Path, tmp: Path) -> None:
    (task / "errors" / "my-analysis.ipynb").write_text("{}")


def _meta_of_another_tool(task: Path, tmp: Path) -> None:
    (task / "task.json").write_text(json.dumps({"total": 3, "owner": "airflow"}))


def _meta_not_json(task: Path, tmp: Path) -> None:
    (task / "task.json").write_text("total: 3\n")


def _hidden_file(task: Path, tmp: Path) -> None:
    (task / ".notes").write_text("mine")


def _subdir(task: Path, tmp: Path) -> None:
    (task / "plots").mkdir()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (_link_meta, "its task.json is not a plain file"),
        (_link_results, "results is a symbolic link"),
        (_dir_for_a_file, "fn.pkl is not a plain file"),
        (_nested_foreign, "errors/my-analysis.ipynb is not a record kubemap writes"),
        (_meta_of_another_tool, "its task.json is not kubemap's"),
        (_meta_not_json, "its task.json is not kubemap's"),
        (_hidden_file, "holds .notes, which kubemap does not write"),
        (_subdir, "holds plots, which kubemap does not write"),
    ],
)
def test_a_task_that_is_not_only_kubemaps_is_kept_whole(
    tmp_path: Path, change: Callable[[Path, Path], None], why: str
) -> None:
    store = tmp_path / "store"
    task = failed_task(store, "touched")
    failed_task(store, "untouched")
    change(task, tmp_path)
    before_task, before_all = tree(task), tree(tmp_path)
    done = retention.sweep(str(store), 0)
    assert done.removed == ["untouched"]
    assert done.others == [("touched", why)]
    assert tree(task) == before_task
    after = tree(tmp_path)
    assert {k: v for k, v in before_all.items() if "untouched" not in k} == after


def test_a_linked_cache_and_a_linked_store_entry_are_not_followed(tmp_path: Path) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    (elsewhere / "0123456789abcdef0123456789abcdef").mkdir(parents=True)
    entry = elsewhere / "0123456789abcdef0123456789abcdef" / ("ab" * 16)
    entry.write_bytes(b"someone's file")
    backdate(entry, 400)
    store.mkdir()
    (store / "_cache").symlink_to(elsewhere, target_is_directory=True)
    (store / "dir-link").symlink_to(elsewhere, target_is_directory=True)
    before = tree(tmp_path)
    done = retention.sweep(str(store), 0, cache_older_than_days=0)
    assert done.removed == [] and done.cache is None
    assert ("dir-link", "a symbolic link (gc never follows links)") in done.others
    assert ("_cache", "a symbolic link (gc never follows links)") in done.others
    assert tree(tmp_path) == before
