"""The per-item cache through the real local backend: executions are counted (one marker
line per call), never inferred from timing."""

from __future__ import annotations

import functools
from pathlib import Path

import kubemap
import pytest
from kubemap.api.maprun import CachedRun
from kubemap.stores import open_store
from kubemap.task.cacheentries import CACHE_DIR

pytestmark = pytest.mark.timeout(120)


def counted(log: str, x: int) -> int:
    with open(log, "a") as out:
        out.write(f"{x}\n")
    if x == -1:
        raise ValueError("minus one")
    return x * 2


def executions(log: Path) -> list[int]:
    if not log.exists():
        return []
    runs = [int(line) for line in log.read_text().split()]
    log.unlink()
    return runs


def test_second_run_runs_nothing_and_one_change_reruns_one(tmp_path: Path) -> None:
    log, store = tmp_path / "log", str(tmp_path / "store")
    fn = functools.partial(counted, str(log))
    items = list(range(1000))
    assert kubemap.map(fn, items, cache=True, store=store) == [x * 2 for x in items]
    assert len(executions(log)) == 1000
    run = kubemap.submit(fn, items, cache=True, store=store)
    assert isinstance(run, CachedRun) and (run.cache_hits, run.cache_misses) == (1000, 0)
    assert run.results() == [x * 2 for x in items]
    assert run.status().succeeded == 1000 and executions(log) == []
    changed = [*items[:500], 5000, *items[501:]]
    assert kubemap.map(fn, changed, cache=True, store=store)[500] == 10000
    assert executions(log) == [5000]
    grown = items + list(range(2000, 2010))
    run = kubemap.submit(fn, grown, cache=True, store=store)
    assert run.results() == [x * 2 for x in grown]
    assert (run.cache_hits, run.cache_misses) == (1000, 10)
    assert sorted(executions(log)) == list(range(2000, 2010))


def test_version_and_code_are_part_of_the_key(tmp_path: Path) -> None:
    log, store = tmp_path / "log", str(tmp_path / "store")
    fn = functools.partial(counted, str(log))
    kubemap.map(fn, range(5), cache=True, store=store)
    kubemap.map(fn, range(5), cache_version="v2", store=store)
    assert len(executions(log)) == 10
    kubemap.map(fn, range(5), cache_version="v2", store=store)
    assert executions(log) == []
    kubemap.map(lambda x: x * 2, range(5), cache=True, store=store)
    assert executions(log) == []  # another function: its own entries, none of fn's
    entries = {k.split("/")[0] for k in open_store(store).child(CACHE_DIR).list()}
    assert len(entries) == 3


def test_cache_survives_task_deletion(tmp_path: Path) -> None:
    log, store = tmp_path / "log", str(tmp_path / "store")
    fn = functools.partial(counted, str(log))
    run = kubemap.submit(fn, range(20), cache=True, store=store)
    assert run.results() == [x * 2 for x in range(20)]
    run.delete()
    assert [k for k in open_store(store).list() if not k.startswith(CACHE_DIR)] == []
    assert len(executions(log)) == 20
    assert kubemap.map(fn, range(20), cache=True, store=store) == [x * 2 for x in range(20)]
    assert executions(log) == []


def test_streaming_and_failures_use_the_callers_indices(tmp_path: Path) -> None:
    log, store = tmp_path / "log", str(tmp_path / "store")
    fn = functools.partial(counted, str(log))
    kubemap.map(fn, range(10), cache=True, store=store)
    mixed = [*range(10), -1, 10]
    assert (
        dict(
            kubemap.submit(fn, mixed, cache=True, store=store, min_success_ratio=0).as_completed(
                return_exceptions=True
            )
        )[10].index
        == 10
    )
    run = kubemap.submit(fn, mixed, cache=True, store=store)
    with pytest.raises(kubemap.MapTaskError) as caught:
        run.results()
    assert list(caught.value.failures) == [10]
    assert "from the cache" in str(caught.value)
    values = run.results(return_exceptions=True)
    assert values[:10] == [x * 2 for x in range(10)] and values[11] == 20
    assert isinstance(values[10], kubemap.RemoteError) and values[10].index == 10
    streamed = list(kubemap.imap(fn, [*range(12)], cache=True, store=store))
    assert streamed == [x * 2 for x in range(12)]
    assert -1 in executions(log)


def count_bytes(f: kubemap.File) -> int:
    return len(f.read())


def test_ten_new_files_among_a_thousand_run_ten(tmp_path: Path) -> None:
    data, store = tmp_path / "data", str(tmp_path / "store")
    data.mkdir()
    for i in range(1000):
        (data / f"{i:04d}.txt").write_text("x" * (i % 7))
    first = kubemap.submit(count_bytes, kubemap.files(f"{data}/*.txt"), cache=True, store=store)
    assert first.results() == [i % 7 for i in range(1000)] and first.cache_misses == 1000
    for i in range(1000, 1010):
        (data / f"{i:04d}.txt").write_text("yy")
    second = kubemap.submit(count_bytes, kubemap.files(f"{data}/*.txt"), cache=True, store=store)
    assert (second.cache_hits, second.cache_misses) == (1000, 10)
    assert second.results()[-10:] == [2] * 10


def test_retry_of_a_cached_run_reruns_only_its_failed_misses(tmp_path: Path) -> None:
    log, store = tmp_path / "log", str(tmp_path / "store")
    fn = functools.partial(counted, str(log))
    kubemap.map(fn, range(5), cache=True, store=store)
    executions(log)
    # min_success_ratio=0: both misses run (fail-fast could stop before 7 ran)
    run = kubemap.submit(fn, [0, 1, -1, 2, 7], cache=True, store=store, min_success_ratio=0)
    assert (run.cache_hits, run.cache_misses) == (3, 2)
    run.wait()
    assert sorted(executions(log)) == [-1, 7]
    run.retry(fn=functools.partial(abs))
    assert run.results() == [0, 2, 1, 4, 14]
    assert executions(log) == []


def test_every_answer_of_a_partly_cached_run_is_in_the_callers_numbering(
    tmp_path: Path,
) -> None:
    # issue 18, item 3: 10 inputs of which 5 cached said not_run() == "5-9"
    log, store = tmp_path / "log", str(tmp_path / "store")
    fn = functools.partial(counted, str(log))
    kubemap.map(fn, range(0, 10, 2), cache=True, store=store)  # the even ones are cached
    executions(log)
    run = kubemap.submit(fn, range(10), cache=True, store=store)
    assert (run.cache_hits, run.cache_misses) == (5, 5)
    status = run.wait()
    assert (status.total, status.succeeded, status.failed) == (10, 10, 0)
    assert str(run.not_run()) == "" and run.failures() == {}
    assert sorted(executions(log)) == [1, 3, 5, 7, 9]
    # a failure among the misses, fail-fast: the error, failures() and not_run() agree
    items = [0, 2, -1, 4, 101, 103, 6, 105]  # misses at caller's 2, 4, 5, 7
    run = kubemap.submit(fn, items, cache=True, store=store, parallelism=1, items_per_pod=1)
    status = run.wait()
    with pytest.raises(kubemap.MapTaskError) as caught:
        run.results()
    error = caught.value
    failures, not_run = run.failures(), run.not_run()
    assert list(failures) == list(error.failures) == [2]
    assert failures[2].index == error.failures[2].index == 2
    assert set(not_run) == set(error.not_run) <= {4, 5, 7}
    ran = {i for i, v in enumerate(run.results(partial=True)) if v is not None}
    assert {0, 1, 3, 6} <= ran and not ran & {2} and not ran & set(not_run)
    assert error.succeeded == status.succeeded == len(ran)
    assert len(ran) + len(failures) + len(not_run) == status.total == len(items)
    # as_completed and return_exceptions: each caller's index once
    pairs = list(run.as_completed(return_exceptions=True))
    assert sorted(i for i, _ in pairs) == list(range(len(items)))
    assert {i for i, v in pairs if isinstance(v, kubemap.RemoteError)} == {2, *not_run}
    assert all(v.index == i for i, v in pairs if isinstance(v, kubemap.RemoteError))
    # retry with a fix: the caller's numbering again
    run.retry(fn=abs)
    assert run.results() == [x * 2 if i in ran else abs(x) for i, x in enumerate(items)]
    assert run.failures() == {} and str(run.not_run()) == ""
    assert run.status().succeeded == len(items)


def test_min_success_ratio_counts_the_callers_inputs_not_the_misses(tmp_path: Path) -> None:
    # 5 of 6 inputs succeed (0.83 >= 0.8), but counted over the 3 misses alone 2/3 < 0.8:
    # the run stopped at the failure and never ran the last miss (found by the matrix)
    log, store = tmp_path / "log", str(tmp_path / "store")
    fn = functools.partial(counted, str(log))
    kubemap.map(fn, [0, 2, 4], cache=True, store=store)
    executions(log)
    items = [0, 1, 2, -1, 4, 5]
    options = {"parallelism": 1, "items_per_pod": 1, "min_success_ratio": 0.8}
    run = kubemap.submit(fn, items, cache=True, store=store, **options)
    status = run.wait()
    assert (status.phase.value, status.succeeded, status.failed) == ("Succeeded", 5, 1)
    assert sorted(executions(log)) == [-1, 1, 5]
    assert run.results() == [0, 2, 4, None, 8, 10] and list(run.failures()) == [3]
    assert run.options.min_success_ratio == 0.8  # the caller's, as given
    # and a ratio the caller's inputs do not meet still stops the run
    strict = kubemap.submit(fn, [0, -1, 2, 9], cache=True, store=store, min_success_ratio=0.8)
    with pytest.raises(kubemap.MapTaskError) as caught:
        strict.results()
    assert list(caught.value.failures) == [1]


def test_attach_of_a_cached_task_answers_in_the_callers_numbering(tmp_path: Path) -> None:
    # MapRun.attach (and so `kubemap results/retry NAME`) read the inner task: values at
    # the misses' own indices, hits left out (a conformance-matrix finding)
    log, store = tmp_path / "log", str(tmp_path / "store")
    fn = functools.partial(counted, str(log))
    kubemap.map(fn, [0, 2, 4], cache=True, store=store)
    items = [0, 1, 2, -1, 4, 5]
    run = kubemap.submit(fn, items, cache=True, store=store, min_success_ratio=0, name="cached")
    run.wait()
    executions(log)
    attached = kubemap.MapRun.attach("cached", store=store)
    assert isinstance(attached, CachedRun) and attached.total == len(items)
    assert (attached.cache_hits, attached.cache_misses) == (3, 3)
    status = attached.status()
    assert (status.total, status.succeeded, status.failed) == (6, 5, 1)
    assert attached.results(partial=True) == [0, 2, 4, None, 8, 10]
    assert list(attached.failures()) == [3] and attached.failures()[3].index == 3
    assert str(attached.not_run()) == ""
    assert dict(attached.as_completed(return_exceptions=True))[1] == 2
    attached.retry(fn=abs)
    assert attached.results() == [0, 2, 4, 1, 8, 10] and executions(log) == []
