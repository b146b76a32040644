"""kubemap.map / submit through the real local backend (worker processes, file:// store).

Each test function below is module-level so that it pickles; failures are made flaky with
marker files in tmp_path, so a retry really runs a second time.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings
from pathlib import Path

import kubemap
import pytest
from kubemap.resources.maptask import Phase
from kubemap.stores import open_store
from kubemap.task import data as taskdata

pytestmark = pytest.mark.timeout(60)


def square(x: int) -> int:
    return x * x


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError(f"bad input {x}")
    return x


def fail_every_tenth(x: int) -> int:
    if x % 10 == 0:
        raise RuntimeError(f"tenth {x}")
    return x


def flaky(marker_dir: str, x: int) -> int:
    """Fails the first time it sees x in (3, 5), succeeds on the next attempt."""
    if x in (3, 5):
        marker = Path(marker_dir) / f"seen-{x}"
        if not marker.exists():
            marker.write_text("1")
            raise ConnectionError(f"transient failure for {x}")
    return x + 100


def counted_flaky(marker_dir: str, x: int) -> int:
    """flaky(), counting every call of x in calls-<x> (one byte a call)."""
    with open(Path(marker_dir) / f"calls-{x}", "a") as out:
        out.write("x")
    return flaky(marker_dir, x)


def slow(x: int) -> int:
    time.sleep(0.3)
    return x


def die_on_two(x: int) -> int:
    if x == 2:
        os._exit(7)
    return x


def calls_in_this_process(x: int, _seen: list[int] = []) -> tuple[int, int]:  # noqa: B006
    _seen.append(x)  # a fresh list each time fn.pkl is loaded
    return os.getpid(), len(_seen)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return (tmp_path / "store").as_uri()


def test_results_in_input_order(store: str) -> None:
    assert kubemap.map(square, range(1000), store=store, parallelism=2) == [
        x * x for x in range(1000)
    ]


def test_generator_inputs_and_items_per_pod(store: str) -> None:
    run = kubemap.submit(square, (x for x in range(25)), store=store, items_per_pod=4)
    assert run.results() == [x * x for x in range(25)]
    assert run.status().phase is Phase.SUCCEEDED and run.status().succeeded == 25
    keys = list(open_store(run.store_url).list("results/"))
    assert len(keys) == 7  # 6 slices of 4, one of 1: exactly as pods would run them


def test_empty_input_starts_nothing(store: str) -> None:
    assert kubemap.map(square, [], store=store) == []  # a sized empty input: no upload at all
    assert list(open_store(store).list()) == []
    run = kubemap.submit(square, iter(()), store=store)  # unsized: an empty task, no workers
    assert run.results() == [] and run.status().phase is Phase.SUCCEEDED
    assert list(open_store(run.store_url).list("results/")) == []


def test_function_is_loaded_once_per_worker(store: str) -> None:
    pairs = kubemap.map(
        calls_in_this_process, range(40), store=store, parallelism=2, items_per_pod=1
    )
    by_pid: dict[int, list[int]] = {}
    for pid, count in pairs:
        by_pid.setdefault(pid, []).append(count)
    assert len(by_pid) <= 2
    for counts in by_pid.values():
        assert sorted(counts) == list(range(1, len(counts) + 1))


def test_worker_exception_is_map_task_error_with_traceback(store: str) -> None:
    with pytest.raises(kubemap.MapTaskError) as info:
        kubemap.map(fail_on_seven, range(20), store=store, parallelism=2)
    error = info.value
    assert list(error.failures) == [7]
    failure = error.failures[7]
    assert failure.type == "ValueError" and "bad input 7" in failure.message
    assert "fail_on_seven" in failure.traceback and "raise ValueError" in failure.traceback
    assert "Remote traceback" in str(error) and "bad input 7" in str(error)
    assert store in str(error) and "results(partial=True)" in str(error)
    # partial results stay reachable
    run = kubemap.MapRun.attach(error.name, store=store)
    values = run.results(partial=True)
    assert values[7] is None
    done = taskdata.succeeded_indexes(open_store(run.store_url))
    assert all(values[i] == i for i in done)
    assert 7 not in done
    assert set(run.failures()) == {7}


def test_retries_rerun_failed_indices(store: str, tmp_path: Path) -> None:
    fn = functools.partial(counted_flaky, str(tmp_path))
    run = kubemap.submit(fn, range(8), store=store, retries=1, items_per_pod=1)
    assert run.results() == [x + 100 for x in range(8)]
    calls = {x: len((tmp_path / f"calls-{x}").read_text()) for x in range(8)}
    assert calls == {0: 1, 1: 1, 2: 1, 3: 2, 4: 1, 5: 2, 6: 1, 7: 1}  # 3 and 5 ran twice
    assert run.status().retries == 2


def test_without_retries_a_flaky_index_fails(store: str, tmp_path: Path) -> None:
    fn = functools.partial(flaky, str(tmp_path))
    with pytest.raises(kubemap.MapTaskError) as info:
        kubemap.map(fn, range(8), store=store, parallelism=1, items_per_pod=8)
    # Fail-fast: 3's failure decides the run, so its slice stops there (5 never runs).
    assert set(info.value.failures) == {3} and list(info.value.not_run) == [4, 5, 6, 7]
    assert info.value.failures[3].type == "ConnectionError"
    assert not (tmp_path / "seen-5").exists()


def test_min_success_ratio_tolerates_failures(store: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = kubemap.map(fail_every_tenth, range(100), store=store, min_success_ratio=0.9)
    assert values == [None if x % 10 == 0 else x for x in range(100)]
    assert any("10 of 100 inputs" in str(w.message) for w in caught)

    run = kubemap.submit(fail_every_tenth, range(100), store=store, min_success_ratio=0.9)
    assert run.wait().phase is Phase.SUCCEEDED
    assert set(run.failures()) == set(range(0, 100, 10))


def test_failure_budget_exceeded_fails_fast(store: str) -> None:
    run = kubemap.submit(fail_every_tenth, range(100), store=store, min_success_ratio=0.95)
    status = run.wait()
    assert status.phase is Phase.FAILED and status.failed > 5
    with pytest.raises(kubemap.MapTaskError):
        run.results()


def test_timeout_keeps_what_finished(store: str) -> None:
    run = kubemap.submit(slow, range(40), store=store, parallelism=2, timeout=1.0)
    with pytest.raises(kubemap.TimeoutError, match="timeout=1s"):
        run.results()
    status = run.status()
    assert status.phase is Phase.FAILED and 1 <= status.succeeded < 40
    values = run.results(partial=True)
    assert [v for v in values if v is not None] == [
        i for i in taskdata.succeeded_indexes(open_store(run.store_url))
    ]
    with pytest.raises(kubemap.TimeoutError):
        kubemap.map(slow, range(40), store=store, parallelism=2, timeout=0.5)


def test_wait_timeout_does_not_stop_the_run(store: str) -> None:
    run = kubemap.submit(slow, range(6), store=store, parallelism=2)
    with pytest.raises(kubemap.TimeoutError, match="still running"):
        run.wait(timeout=0.1)
    assert run.wait().phase is Phase.SUCCEEDED
    assert run.results() == list(range(6))


def test_cancel_reports_only_stored_results(store: str) -> None:
    run = kubemap.submit(slow, range(40), store=store, parallelism=2)
    time.sleep(0.8)
    run.cancel()
    status = run.wait(timeout=5)
    assert status.phase is Phase.CANCELLED
    done = taskdata.succeeded_indexes(open_store(run.store_url))
    assert status.succeeded == len(done) < 40
    values = run.results(partial=True)
    assert [i for i, v in enumerate(values) if v is not None] == list(done)
    with pytest.raises(kubemap.CancelledError):
        run.results()


def test_interrupt_cancels_the_run(store: str) -> None:
    main = threading.main_thread()
    assert threading.current_thread() is main
    timer = threading.Timer(0.8, lambda: os.kill(os.getpid(), 2))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        kubemap.map(slow, range(40), store=store, parallelism=2, name="interrupted")
    timer.join()
    run = kubemap.MapRun.attach("interrupted", store=store)
    done = taskdata.succeeded_indexes(open_store(run.store_url))
    assert run.status().succeeded == len(done) < 40
    assert run.status().phase is Phase.CANCELLED  # attach reports it as what it is


def test_worker_crash_is_a_failure_not_a_hang(store: str) -> None:
    with pytest.raises(kubemap.MapTaskError) as info:
        kubemap.map(die_on_two, range(6), store=store, items_per_pod=1, parallelism=2)
    assert info.value.failures[2].type == "WorkerDied"
    assert "exit code 7" in info.value.failures[2].message


def test_crash_in_an_automatic_slice_is_pinned_to_its_index(store: str) -> None:
    run = kubemap.submit(die_on_two, range(40), store=store, parallelism=2)
    with pytest.raises(kubemap.MapTaskError) as info:
        run.results()
    assert set(info.value.failures) == {2}
    assert "exit code 7" in info.value.failures[2].message
    values = run.results(partial=True)
    done = taskdata.succeeded_indexes(open_store(run.store_url))
    assert 2 not in done and len(done) >= 1
    assert [i for i, v in enumerate(values) if v is not None and v == i] == list(done)


def test_unpicklable_input_is_named_with_its_index(store: str) -> None:
    with pytest.raises(kubemap.SerializationError) as info:
        kubemap.map(square, [1, 2, threading.Lock(), 4], store=store)
    assert info.value.index == 2 and "input 2" in str(info.value)


def test_unpicklable_function_is_named(store: str) -> None:
    lock = threading.Lock()
    with pytest.raises(kubemap.SerializationError) as info:
        kubemap.map(lambda x: (lock, x), [1], store=store)
    assert info.value.index is None and "cannot be pickled" in str(info.value)


def test_bad_option_is_config_error(store: str) -> None:
    with pytest.raises(kubemap.ConfigError, match="parallelism=0"):
        kubemap.map(square, [1], store=store, parallelism=0)


def test_named_task_must_be_new(store: str) -> None:
    kubemap.submit(square, [1, 2], store=store, name="twice").wait()
    with pytest.raises(kubemap.ConfigError, match="already exists"):
        kubemap.submit(square, [1, 2], store=store, name="twice")


def test_default_store_is_cleaned_after_success_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEMAP_STORE", str(tmp_path / "default"))
    assert kubemap.map(square, range(5)) == [0, 1, 4, 9, 16]
    assert list(open_store(str(tmp_path / "default")).list()) == []
    with pytest.raises(kubemap.MapTaskError):
        kubemap.map(fail_on_seven, range(10))
    assert any(k.endswith("task.json") for k in open_store(str(tmp_path / "default")).list())


def test_status_while_running(store: str) -> None:
    run = kubemap.submit(slow, range(8), store=store, parallelism=2)
    status = run.status()
    assert status.total == 8 and status.phase in (Phase.PENDING, Phase.RUNNING)
    final = run.wait()
    assert (final.succeeded, final.failed, final.active) == (8, 0, 0)
    assert repr(run).startswith(f"<MapRun {run.name} Succeeded 8/8")
