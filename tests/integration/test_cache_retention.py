"""The per-item cache has its own retention: an entry goes when it has not been used for
$KUBEMAP_CACHE_DAYS (default 30), judged by the entry's own time, or when the cache is over
$KUBEMAP_CACHE_MAX_GB (least recently used first); never because a task sweep mistook the
cache directory for a task. Executions are counted (one line per call), not inferred."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import kubemap
import pytest
from kubemap.api.maprun import CachedRun
from kubemap.task import retention
from test_gc_safety import cli

pytestmark = pytest.mark.timeout(180)

DAY = 86400.0


def counted(log: str, x: int) -> int:
    with open(log, "a") as out:
        out.write(f"{x}\n")
    return x * 10


def executions(log: Path) -> int:
    if not log.exists():
        return 0
    count = len(log.read_text().split())
    log.unlink()
    return count


def entries(root: Path) -> list[Path]:
    return sorted(p for p in (root / "_cache").rglob("*") if p.is_file() and len(p.name) == 32)


def backdate(path: Path, days: float) -> None:
    when = time.time() - days * DAY
    os.utime(path, (when, when))


@pytest.fixture
def home_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The built-in default store, under a private XDG_CACHE_HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name in ("KUBEMAP_STORE", retention.ENV_RETENTION_DAYS):
        monkeypatch.delenv(name, raising=False)
    for name in (retention.ENV_CACHE_DAYS, retention.ENV_CACHE_MAX_GB):
        monkeypatch.delenv(name, raising=False)
    return Path(retention.builtin_store_url().removeprefix("file://"))


def test_an_unrelated_map_does_not_wipe_a_cache_in_daily_use(
    tmp_path: Path, home_store: Path
) -> None:
    """The issue's reproduction: fill the cache, `touch -d '8 days ago' .../_cache`, run
    `kubemap.map(abs, [1])`; the next cached call recomputed everything."""
    log = tmp_path / "log"
    fn = functools.partial(counted, str(log))
    assert kubemap.map(fn, range(20), cache=True) == [x * 10 for x in range(20)]
    assert executions(log) == 20
    backdate(home_store / "_cache", 8)
    assert kubemap.map(abs, [1]) == [1]
    run = kubemap.submit(fn, range(20), cache=True)
    assert isinstance(run, CachedRun)
    assert run.results() == [x * 10 for x in range(20)]
    assert (run.cache_hits, executions(log)) == (20, 0)


def test_gc_never_counts_the_cache_as_a_task(tmp_path: Path) -> None:
    store = tmp_path / "store"
    log = tmp_path / "log"
    kubemap.map(functools.partial(counted, str(log)), range(5), cache=True, store=str(store))
    before = entries(store)
    assert len(before) == 5
    tasks = sorted(p.name for p in store.iterdir() if (p / "task.json").is_file())
    done = cli("gc", "--store", str(store), "--older-than", "0")
    assert done.returncode == 0, done.stderr
    assert f"removed {len(tasks)} task(s)" in done.stdout  # the cached run's own task only
    assert sorted(p.name for p in store.iterdir()) == ["_cache"]
    assert "kept _cache: the per-item cache" in done.stdout
    assert entries(store) == before


def test_entries_unused_past_the_cache_period_go_the_rest_stay(tmp_path: Path) -> None:
    store = tmp_path / "store"
    log = tmp_path / "log"
    fn = functools.partial(counted, str(log))
    kubemap.map(fn, range(6), cache=True, store=str(store))
    assert executions(log) == 6
    found = entries(store)
    for old in found[:4]:
        backdate(old, 40)
    done = cli("gc", "--store", str(store))  # default cache period: 30 days
    assert done.returncode == 0, done.stderr
    assert entries(store) == found[4:]
    assert "removed 4 cache entries not used for 30 days" in done.stdout
    assert "2 kept" in done.stdout
    run = kubemap.submit(fn, range(6), cache=True, store=str(store))
    assert run.results() == [x * 10 for x in range(6)]
    assert (run.cache_hits, executions(log)) == (2, 4)

    for entry in entries(store):
        backdate(entry, 10)
    done = cli("gc", "--store", str(store), env={retention.ENV_CACHE_DAYS: "7"})
    assert done.returncode == 0, done.stderr
    assert entries(store) == [] and "removed 6 cache entries not used for 7 days" in done.stdout


def _atime_follows_reads(where: Path) -> bool:
    probe = where / "atime-probe"
    probe.write_bytes(b"x")
    backdate(probe, 5)
    probe.read_bytes()
    return probe.stat().st_atime > time.time() - DAY


def test_an_old_entry_that_is_still_being_hit_is_kept(tmp_path: Path) -> None:
    if not _atime_follows_reads(tmp_path):
        pytest.skip("this filesystem does not record reads (noatime): entries age from writes")
    store = tmp_path / "store"
    log = tmp_path / "log"
    fn = functools.partial(counted, str(log))
    kubemap.map(fn, range(4), cache=True, store=str(store))
    for entry in entries(store):
        backdate(entry, 40)  # written long ago...
    hit = kubemap.submit(fn, range(2), cache=True, store=str(store))
    assert (hit.cache_hits, hit.results()) == (2, [0, 10])  # ...read now
    done = cli("gc", "--store", str(store))
    assert done.returncode == 0, done.stderr
    assert len(entries(store)) == 2
    run = kubemap.submit(fn, range(4), cache=True, store=str(store))
    run.results()
    assert (run.cache_hits, executions(log)) == (2, 4 + 2)


def test_a_size_cap_removes_the_least_recently_used_first(tmp_path: Path) -> None:
    store = tmp_path / "store"
    log = tmp_path / "log"
    kubemap.map(functools.partial(counted, str(log)), range(10), cache=True, store=str(store))
    found = entries(store)
    for age, entry in enumerate(found):
        backdate(entry, 10 - age)  # found[0] used longest ago
    size = sum(p.stat().st_size for p in found)
    cap = (size - 1) / 1e9  # one byte too small: the oldest entry has to go
    done = cli("gc", "--store", str(store), env={retention.ENV_CACHE_MAX_GB: repr(cap)})
    assert done.returncode == 0, done.stderr
    assert entries(store) == found[1:]


def test_bad_cache_settings_are_refused_with_the_variable_named(tmp_path: Path) -> None:
    done = cli("gc", "--store", str(tmp_path), env={retention.ENV_CACHE_DAYS: "soon"})
    assert done.returncode == 2 and "KUBEMAP_CACHE_DAYS='soon' is not a number" in done.stderr


def test_the_sweep_at_submit_applies_the_cache_rule_at_most_once_a_day(
    tmp_path: Path, home_store: Path
) -> None:
    log = tmp_path / "log"
    fn = functools.partial(counted, str(log))
    kubemap.map(fn, range(3), cache=True)
    for entry in entries(home_store):
        backdate(entry, 40)
    kubemap.map(abs, [1])  # the sweep at submit: unused for 40 days > 30, they go
    assert entries(home_store) == []
    kubemap.map(fn, range(3), cache=True)
    for entry in entries(home_store):
        backdate(entry, 40)
    kubemap.map(abs, [1])  # walked less than a day ago: not again
    assert len(entries(home_store)) == 3
