"""kubemap.Executor against CPython's own executor tests (Lib/test/test_concurrent_futures:
ExecutorTest, the shutdown tests, as_completed), adapted to the local backend, plus the
joblib backend. Counting calls and futures, not timing them (test_map_timeout only
checks that the timeout is honoured)."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import importlib
import operator
import time
from pathlib import Path
from typing import Any

import kubemap
import pytest

pytestmark = pytest.mark.timeout(120)


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def raising(x: int) -> int:
    raise RuntimeError(123)  # some comment


def die(x: int) -> int:
    import os

    os._exit(9)


@pytest.fixture
def executor(tmp_path: Path) -> Any:
    with kubemap.Executor(max_workers=2, store=str(tmp_path / "store")) as ex:
        yield ex


def test_submit(executor: kubemap.Executor) -> None:
    future = executor.submit(pow, 2, 8)
    assert future.result() == 256


def test_submit_keyword(executor: kubemap.Executor) -> None:
    assert executor.submit(mul, 2, y=8).result() == 16
    assert executor.submit(capture, 1, self=2, fn=3).result() == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        executor.submit(arg=1)  # type: ignore[call-arg]


def test_map(executor: kubemap.Executor) -> None:
    assert list(executor.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == list(
        map(pow, range(10), range(10))
    )
    with pytest.raises(ValueError, match="chunksize must be >= 1"):
        executor.map(pow, range(3), range(3), chunksize=0)


def test_map_exception(executor: kubemap.Executor) -> None:
    i = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(i) == (0, 1)
    assert next(i) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(i)


def test_map_timeout(executor: kubemap.Executor) -> None:
    results = []
    with pytest.raises(cf.TimeoutError):
        for i in executor.map(time.sleep, [0, 0, 8], timeout=4):
            results.append(i)
    assert results == [None, None]


def test_max_workers_negative() -> None:
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            kubemap.Executor(max_workers=number)


def test_bad_option_fails_at_construction() -> None:
    with pytest.raises(kubemap.ConfigError, match="unknown option 'retires'"):
        kubemap.Executor(retires=2)


def test_remote_traceback_is_the_cause(executor: kubemap.Executor) -> None:
    future = executor.submit(raising, 1)
    with pytest.raises(RuntimeError) as caught:
        future.result()
    assert caught.value.args == (123,)
    assert "raise RuntimeError(123)  # some comment" in str(caught.value.__cause__)
    assert isinstance(future.exception(), RuntimeError)


def test_dead_worker_is_a_remote_failure(executor: kubemap.Executor) -> None:
    with pytest.raises(kubemap.RemoteFailure, match="WorkerDied"):
        executor.submit(die, 1).result()


def test_as_completed_and_wait(executor: kubemap.Executor) -> None:
    fs = {executor.submit(operator.neg, x) for x in range(20)}
    assert set(cf.as_completed(fs, timeout=60)) == fs
    done, not_done = cf.wait(fs, return_when=cf.ALL_COMPLETED)
    assert done == fs and not not_done
    assert sorted(f.result() for f in fs) == sorted(-x for x in range(20))


def test_many_submits_make_one_run(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with kubemap.Executor(max_workers=2, store=str(store), batch_delay=0.5) as ex:
        fs = [ex.submit(mul, x, 2) for x in range(200)]
        assert [f.result() for f in fs] == [x * 2 for x in range(200)]
    # one task per batch; an explicit store keeps them: count the tasks
    tasks = {key.split("/")[0] for key in kubemap.stores.open_store(str(store)).list()}
    assert len(tasks) == 1


def test_a_name_names_every_run_of_an_executor(tmp_path: Path) -> None:
    """An Executor makes one run per batch, and a task name is taken once per store: a
    `name=` given to it (or through joblib's parallel_config) is the prefix of its runs'
    names, so the second batch does not fail on the first one's name."""
    store = tmp_path / "store"
    with kubemap.Executor(max_workers=2, store=str(store), name="nightly", batch_delay=0.05) as ex:
        assert ex.submit(mul, 1, 2).result() == 2
        assert ex.submit(mul, 2, 2).result() == 4  # a batch of its own: the first has ended
    tasks = {key.split("/")[0] for key in kubemap.stores.open_store(str(store)).list()}
    assert tasks == {"nightly-1", "nightly-2"}


def test_run_after_shutdown(tmp_path: Path) -> None:
    ex = kubemap.Executor(max_workers=1, store=str(tmp_path))
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(pow, 2, 5)


def test_context_manager_shutdown(tmp_path: Path) -> None:
    with kubemap.Executor(max_workers=5, store=str(tmp_path)) as e:
        assert list(e.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        e.submit(abs, 1)


def test_cancel_futures(tmp_path: Path) -> None:
    ex = kubemap.Executor(max_workers=3, store=str(tmp_path), batch_delay=0.5)
    fs = [ex.submit(time.sleep, 0.1) for _ in range(50)]
    ex.shutdown(cancel_futures=True)
    # We can't guarantee the exact number of cancellations, but we can guarantee that
    # *some* were cancelled; the others ran to completion or, running, had their run
    # cancelled (kubemap's shutdown(cancel_futures=True) lets no work go on).
    cancelled = [fut for fut in fs if fut.cancelled()]
    assert len(cancelled) >= 20
    for fut in fs:
        if not fut.cancelled():
            assert fut.done()
            assert fut.exception() is None or isinstance(fut.exception(), kubemap.CancelledError)


def test_shutdown_without_wait_lets_futures_finish(tmp_path: Path) -> None:
    ex = kubemap.Executor(max_workers=2, store=str(tmp_path))
    fs = [ex.submit(mul, x, x) for x in range(6)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=60) for f in fs] == [x * x for x in range(6)]


def square(x: int) -> int:
    return x * x


def test_joblib_backend(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    import kubemap.joblib_backend  # registers "kubemap"

    with joblib.parallel_config(backend="kubemap", store=str(tmp_path), n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(square)(i) for i in range(50))
    assert out == [i * i for i in range(50)]
    tasks = {key.split("/")[0] for key in kubemap.stores.open_store(str(tmp_path)).list()}
    assert 1 <= len(tasks) < 50  # auto-batching: far fewer runs than calls
    with (
        joblib.parallel_config(backend="kubemap", store=str(tmp_path), n_jobs=2),
        pytest.raises(ZeroDivisionError),
    ):
        joblib.Parallel()(joblib.delayed(divmod)(1, i) for i in (1, 0, 2))


def test_calls_of_different_functions_share_a_run(tmp_path: Path) -> None:
    with kubemap.Executor(max_workers=2, store=str(tmp_path), batch_delay=0.5) as ex:
        fs = [ex.submit(f, 2, 3) for f in (mul, pow, operator.add)]
        assert [f.result() for f in fs] == [6, 8, 5]
    assert len({key.split("/")[0] for key in kubemap.stores.open_store(str(tmp_path)).list()}) == 1


# -- the user's own exception types, on every call (issue 18, item 5) ------------------
def test_user_exception_type_survives_warm_workers(tmp_path: Path) -> None:
    # A class that travels by value (defined in a function here; in __main__ for a
    # script): the warm workers forked by the first call never saw it.
    class LocalErr(Exception):
        pass

    def local_boom(x: int) -> int:
        raise LocalErr(f"bad {x}")

    assert kubemap.map(abs, [-1, -2], store=str(tmp_path)) == [1, 2]
    with kubemap.Executor(max_workers=2, store=str(tmp_path)) as ex:
        for attempt in range(3):
            with pytest.raises(LocalErr) as caught:
                ex.submit(local_boom, attempt).result()
            assert type(caught.value) is LocalErr and caught.value.args == (f"bad {attempt}",)
            assert 'raise LocalErr(f"bad {x}")' in str(caught.value.__cause__)
        with pytest.raises(LocalErr, match="bad 1"):
            list(ex.map(local_boom, [1, 2]))
    joblib = pytest.importorskip("joblib")
    importlib.import_module("kubemap.joblib_backend")  # registers "kubemap"
    for _ in range(2):
        with (
            joblib.parallel_config(backend="kubemap", store=str(tmp_path), n_jobs=2),
            pytest.raises(LocalErr, match="bad 3"),
        ):
            joblib.Parallel()(joblib.delayed(local_boom)(i) for i in (3,))


class TwoArgs(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


def two_args(x: int) -> int:
    raise TwoArgs(x, "cannot be rebuilt from its args")


def test_an_exception_that_does_not_unpickle_is_still_caught_by_its_class(
    executor: kubemap.Executor,
) -> None:
    with pytest.raises(TwoArgs, match="5: cannot be rebuilt") as caught:
        executor.submit(two_args, 5).result()
    assert isinstance(caught.value, kubemap.RemoteError)


SCRIPT = """
import sys
import kubemap

class MyErr(Exception):
    pass

def boom(x):
    raise MyErr(f"bad {x}")

store = sys.argv[1]
kubemap.map(abs, [-1, -2], store=store)  # any call: the local workers are warm now
seen = []
with kubemap.Executor(max_workers=2, store=store) as ex:
    for i in range(3):
        try:
            ex.submit(boom, i).result()
        except MyErr as exc:
            seen.append(f"MyErr:{exc}:{type(exc) is MyErr}:{'raise MyErr' in str(exc.__cause__)}")
        except Exception as exc:
            seen.append(f"other {type(exc).__name__}: {exc}")
    try:
        list(ex.map(boom, [7, 8]))
    except MyErr as exc:
        seen.append(f"map MyErr:{exc}")
import joblib, kubemap.joblib_backend
with joblib.parallel_config(backend="kubemap", store=store, n_jobs=2):
    try:
        joblib.Parallel()(joblib.delayed(boom)(i) for i in (4,))
    except MyErr as exc:
        seen.append(f"joblib MyErr:{exc}")
    except Exception as exc:
        seen.append(f"joblib other {type(exc).__name__}: {exc}")
print("\\n".join(seen))
"""


def test_script_main_exception_types_on_every_call(tmp_path: Path) -> None:
    pytest.importorskip("joblib")
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "MyErr:bad 0:True:True",
        "MyErr:bad 1:True:True",
        "MyErr:bad 2:True:True",
        "map MyErr:bad 7",
        "joblib MyErr:bad 4",
    ]


# -- what the run says for calls, as results() says it (found by the conformance matrix) --
def flaky(marker_dir: str, x: int) -> int:
    """Fails the first time it runs for x (a marker file remembers), then succeeds."""
    marker = Path(marker_dir) / f"ran-{x}"
    with open(Path(marker_dir) / "calls", "a") as out:
        out.write(f"{x}\n")
    if not marker.exists():
        marker.write_text("1")
        raise MyFlake(f"first try of {x}")
    return x * 3


class MyFlake(Exception):
    pass


def test_retries_retry_a_call_that_raised(tmp_path: Path) -> None:
    fn = functools.partial(flaky, str(tmp_path))
    with kubemap.Executor(max_workers=2, store=str(tmp_path / "s"), retries=1) as ex:
        assert [f.result() for f in [ex.submit(fn, x) for x in range(3)]] == [0, 3, 6]
        assert list(ex.map(fn, [10, 11])) == [30, 33]
    calls = sorted(int(x) for x in (tmp_path / "calls").read_text().split())
    assert calls == [0, 0, 1, 1, 2, 2, 10, 10, 11, 11]  # each ran twice: once failed
    with (
        kubemap.Executor(max_workers=2, store=str(tmp_path / "s")) as ex,  # retries=0
        pytest.raises(MyFlake, match="first try of 20"),
    ):
        ex.submit(fn, 20).result()


def test_a_call_its_run_never_ran_raises_the_runs_timeout(tmp_path: Path) -> None:
    with kubemap.Executor(max_workers=1, store=str(tmp_path), timeout=1.5) as ex:
        fs = [ex.submit(time.sleep, s) for s in (0, 30, 30)]
        assert fs[0].result(timeout=60) is None
        errors = [f.exception(timeout=60) for f in fs[1:]]
    assert all(isinstance(e, kubemap.TimeoutError) for e in errors), errors


def beat_forever(beats: str, x: int) -> int:
    """Calls 0 and 1 return; every other appends a byte to beats/<x> each 0.05 s, forever
    (until its run is stopped)."""
    if x < 2:
        return x
    while True:
        with open(Path(beats) / str(x), "ab") as out:
            out.write(b".")
        time.sleep(0.05)


def fail_once_beating(beats: str, x: int) -> int:
    """Call 0 raises once some other call beats (so one is running when joblib aborts)."""
    if x == 0:
        deadline = time.monotonic() + 30
        while not any(Path(beats).iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        raise ValueError("bad 0")
    return beat_forever(beats, x)


def _beats(beats: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in beats.iterdir()}


def _still_beating(beats: Path, grace: float = 0.5) -> list[str]:
    """The calls that beat after `grace` s more (their function still runs somewhere)."""
    time.sleep(grace)  # a kill takes a moment to land
    before = _beats(beats)
    time.sleep(1.0)  # twenty beats of a live call
    after = _beats(beats)
    return sorted(name for name in after if after[name] != before.get(name))


def _wait_for_beats(beats: Path, n: int) -> dict[str, int]:
    deadline = time.monotonic() + 60
    while len(_beats(beats)) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return _beats(beats)


@pytest.mark.parametrize("wait", [True, False])
def test_shutdown_cancel_futures_stops_running_calls(tmp_path: Path, wait: bool) -> None:
    beats = tmp_path / "beats"
    beats.mkdir()
    ex = kubemap.Executor(max_workers=4, store=str(tmp_path / "store"))
    fs = [ex.submit(beat_forever, str(beats), x) for x in range(4)]
    assert [f.result(timeout=60) for f in fs[:2]] == [0, 1]
    running = _wait_for_beats(beats, 2)
    assert sorted(running) == ["2", "3"] and all(running.values())
    ex.shutdown(wait=wait, cancel_futures=True)
    assert _still_beating(beats) == []
    # A running future cannot be cancelled (concurrent.futures): it raises its run's stop.
    errors = [f.exception(timeout=60) for f in fs[2:]]
    assert [type(e) for e in errors] == [kubemap.CancelledError] * 2, errors


def test_joblib_abort_stops_dispatched_calls(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    importlib.import_module("kubemap.joblib_backend")  # registers "kubemap"
    beats = tmp_path / "beats"
    beats.mkdir()
    fn = functools.partial(fail_once_beating, str(beats))
    with (
        joblib.parallel_config(backend="kubemap", store=str(tmp_path / "store")),
        pytest.raises(ValueError, match="bad 0"),
    ):
        joblib.Parallel(n_jobs=2)(joblib.delayed(fn)(i) for i in range(4))
    started = _beats(beats)
    assert started and all(started.values())  # a call was running when joblib aborted
    assert _still_beating(beats) == []
