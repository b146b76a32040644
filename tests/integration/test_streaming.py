"""Results as they land, through the real local backend: as_completed, imap and
return_exceptions. Gates are marker files, so "before" is observed, never timed."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import kubemap
import pytest
from kubemap.api.streaming import ResultFeed
from kubemap.resources.maptask import Phase

pytestmark = pytest.mark.timeout(90)


def gated(marker_dir: str, x: int) -> int:
    """Records that it started; every item but the first waits for the `go` file."""
    base = Path(marker_dir)
    (base / f"started-{x}").write_text("1")
    deadline = time.monotonic() + 30
    while x > 0 and not (base / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return x * 10


def counted(marker_dir: str, x: int) -> int:
    with open(Path(marker_dir) / f"ran-{x}", "a") as out:
        out.write("x")
    return x + 1


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError(f"bad input {x}")
    return x


def sleepy(x: int) -> int:
    time.sleep(0.05)
    return x


def test_first_result_arrives_before_the_last_item_starts(tmp_path: Path) -> None:
    run = kubemap.submit(
        functools.partial(gated, str(tmp_path)), range(20), parallelism=1, store=str(tmp_path / "s")
    )
    stream = run.as_completed()
    assert next(stream) == (0, 0)
    assert not (tmp_path / "started-19").exists()
    (tmp_path / "go").write_text("1")
    rest = dict(stream)
    assert rest == {i: i * 10 for i in range(1, 20)}


def test_as_completed_yields_every_index_once(tmp_path: Path) -> None:
    run = kubemap.submit(
        functools.partial(counted, str(tmp_path)),
        range(300),
        items_per_pod=7,
        parallelism=2,
        store=str(tmp_path / "s"),
    )
    pairs = list(run.as_completed())
    assert sorted(pairs) == [(i, i + 1) for i in range(300)]
    assert len(list(tmp_path.glob("ran-*"))) == 300


def test_feed_state_stays_small_over_many_result_objects(tmp_path: Path) -> None:
    run = kubemap.submit(lambda x: x, range(2000), items_per_pod=1, store=str(tmp_path))
    run.wait()
    feed = ResultFeed(run.task_store, run.total)
    assert sum(1 for _ in feed.poll()) == 2000
    # what it keeps: one interval and no object names, whatever the number of objects
    assert list(feed.delivered.intervals) == [(0, 2000)] and not feed._read
    assert list(feed.poll()) == []


def test_imap_ordered_and_unordered(tmp_path: Path) -> None:
    store = str(tmp_path)
    assert list(kubemap.imap(sleepy, range(40), parallelism=2, store=store)) == list(range(40))
    unordered = list(kubemap.imap(sleepy, range(40), ordered=False, parallelism=2, store=store))
    assert sorted(unordered) == list(range(40))


def test_imap_stopped_early_cancels_the_run(tmp_path: Path) -> None:
    stream = kubemap.imap(
        functools.partial(gated, str(tmp_path)), range(50), parallelism=1, store=str(tmp_path / "s")
    )
    assert next(stream) == 0
    stream.close()  # cancels the run: its worker, stuck in item 1, is stopped
    (tmp_path / "go").write_text("1")
    time.sleep(0.5)  # had the run gone on, items 2.. would start now
    started = {p.name for p in tmp_path.glob("started-*")}
    assert "started-0" in started and started <= {"started-0", "started-1"}


def test_return_exceptions_on_map_imap_and_results(tmp_path: Path) -> None:
    store = str(tmp_path)
    values = kubemap.map(fail_on_seven, range(10), return_exceptions=True, store=store)
    assert values[:7] == list(range(7)) and values[8:] == [8, 9]
    error = values[7]
    assert isinstance(error, kubemap.RemoteError)
    assert (error.index, error.type, error.message) == (7, "ValueError", "bad input 7")
    streamed = list(kubemap.imap(fail_on_seven, range(10), return_exceptions=True, store=store))
    assert streamed[:7] == list(range(7)) and isinstance(streamed[7], kubemap.RemoteError)
    run = kubemap.submit(fail_on_seven, range(10), store=store)
    with pytest.raises(kubemap.MapTaskError):
        run.results()
    with pytest.raises(kubemap.MapTaskError):
        list(run.as_completed())
    assert run.results(return_exceptions=True)[7] == error.__class__(**{**vars(error)})


def test_cancelled_run_marks_never_run_indices(tmp_path: Path) -> None:
    run = kubemap.submit(
        functools.partial(gated, str(tmp_path)), range(30), parallelism=1, store=str(tmp_path / "s")
    )
    stream = run.as_completed(return_exceptions=True)
    assert next(stream) == (0, 0)
    run.cancel()
    assert run.status().phase is Phase.CANCELLED
    rest = dict(stream)
    assert set(rest) == set(range(1, 30))
    not_run = [v for v in rest.values() if isinstance(v, kubemap.RemoteError)]
    assert not_run and all(e.type == "NotRun" for e in not_run)
    values = run.results(return_exceptions=True)
    assert values[0] == 0 and {type(v) for v in values[1:]} <= {int, kubemap.RemoteError}


def fail_on_threes(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"bad input {x}")
    return x


def test_tolerated_failures_come_out_of_as_completed_and_imap(tmp_path: Path) -> None:
    # issue 18, item 6: with min_success_ratio < 1 the failed indices were left out
    store, n = str(tmp_path), 12
    failing = {i for i in range(n) if i % 3 == 0}
    run = kubemap.submit(fail_on_threes, range(n), store=store, min_success_ratio=0.5)
    pairs = list(run.as_completed(return_exceptions=True))
    assert sorted(i for i, _ in pairs) == list(range(n))  # each index exactly once
    errors = {i: v for i, v in pairs if isinstance(v, Exception)}
    assert set(errors) == failing and all(e.index == i for i, e in errors.items())
    # without return_exceptions: every result, then the failures raise
    seen: list[int] = []
    with pytest.raises(kubemap.MapTaskError) as caught:
        for index, _ in run.as_completed():
            seen.append(index)
    assert sorted(seen) == sorted(set(range(n)) - failing)
    assert set(caught.value.failures) == failing
    # imap: unordered and ordered, with and without return_exceptions
    out = list(
        kubemap.imap(
            fail_on_threes, range(n), store=store, min_success_ratio=0.5, return_exceptions=True
        )
    )
    assert [i for i, v in enumerate(out) if isinstance(v, kubemap.RemoteError)] == sorted(failing)
    unordered = list(
        kubemap.imap(
            fail_on_threes,
            range(n),
            store=store,
            min_success_ratio=0,
            ordered=False,
            return_exceptions=True,
        )
    )
    assert len(unordered) == n and sum(isinstance(v, Exception) for v in unordered) == len(failing)
    got: list[int] = []
    with pytest.raises(kubemap.MapTaskError) as caught:
        for value in kubemap.imap(
            fail_on_threes, range(n), store=store, min_success_ratio=0.5, ordered=False
        ):
            got.append(value)
    assert sorted(got) == sorted(set(range(n)) - failing) and set(caught.value.failures) == failing
    ordered: list[int] = []
    with pytest.raises(kubemap.MapTaskError) as caught:
        for value in kubemap.imap(
            fail_on_threes, range(1, n + 1), store=store, min_success_ratio=0.5
        ):
            ordered.append(value)
    assert ordered == [1, 2]  # those before the first failed index (2), in order
    assert set(caught.value.failures) == {i - 1 for i in range(1, n + 1) if i % 3 == 0}


def test_tolerated_failures_of_a_cached_run_come_out_too(tmp_path: Path) -> None:
    store, n = str(tmp_path), 9
    kubemap.map(fail_on_threes, [1, 2, 4], cache=True, store=store)  # three hits
    run = kubemap.submit(fail_on_threes, range(n), cache=True, store=store, min_success_ratio=0)
    pairs = list(run.as_completed(return_exceptions=True))
    assert sorted(i for i, _ in pairs) == list(range(n))
    assert {i for i, v in pairs if isinstance(v, Exception)} == {0, 3, 6}
    with pytest.raises(kubemap.MapTaskError) as caught:
        list(run.as_completed())
    assert set(caught.value.failures) == {0, 3, 6}
    assert len(caught.value.not_run) == 0 and caught.value.succeeded == n - 3
