"""The worker runtime end to end: `python -m kubemap.worker` in a subprocess, against a real
S3 server (SeaweedFS) and the local filesystem."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubemap.contract import (
    EXIT_INFRA_ERROR,
    EXIT_OK,
    EXIT_USAGE_ERROR,
    EXIT_USER_ERROR,
    INDEX_KEY,
    RESULTS_PREFIX,
)
from kubemap.core.ranges import IndexRanges
from kubemap.resources.termination import SliceOutcome, summary_line
from kubemap.runtime.worker import run_slice
from kubemap.stores import Store, open_store
from kubemap.task import data as taskdata

pytestmark = pytest.mark.timeout(180)


@dataclass(frozen=True)
class Run:
    code: int
    stderr: str
    summary: dict[str, Any] | None
    timing: dict[str, Any] | None = None  # the line's "t": the slice's timing record


@pytest.fixture(params=["file", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "file":
        yield (tmp_path / "store").as_uri()
    else:
        yield request.getfixturevalue("s3_store_url")


def submit(url: str, fn: Callable[..., Any], items: list[Any], name: str = "task") -> Store:
    task = open_store(url).child(name)
    taskdata.write_function(task, fn)
    total = taskdata.write_inputs(task, items)
    taskdata.write_meta(task, taskdata.TaskMeta.new(total, fn.__name__))
    return task


def run_worker(tmp_path: Path, env: Mapping[str, str | None], timeout: float = 60) -> Run:
    """Run `python -m kubemap.worker` with env on top of ours (None unsets a variable)."""
    log = tmp_path / f"termination-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "KUBEMAP_TERMINATION_LOG": str(log), **env}
    proc = subprocess.run(
        [sys.executable, "-m", "kubemap.worker"],
        env={k: v for k, v in full_env.items() if v is not None},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,  # not the repository: the worker must not import the tests from disk
    )
    summary = json.loads(log.read_text()) if log.exists() and log.read_text() else None
    timing = summary.pop("t", None) if summary else None
    return Run(proc.returncode, proc.stderr, summary, timing)


def slice_env(task: Store, start: int, count: int, total: int, attempt: int = 0) -> dict[str, str]:
    return {
        "KUBEMAP_TASK_URL": task.url,
        "KUBEMAP_INDEX": str(start),
        "KUBEMAP_COUNT": str(count),
        "KUBEMAP_TOTAL": str(total),
        "KUBEMAP_ATTEMPT": str(attempt),
    }


# Functions defined here travel by value: the worker process cannot import this test module.
def double(x: int) -> int:
    return 2 * x


def fail_on_five(x: int) -> int:
    if x == 5:
        raise ValueError(f"five is not allowed (got {x})")  # the raising line
    return x + 100


def fail_when_told(x: int) -> int:
    if str(x) in os.environ.get("KUBEMAP_TEST_FAIL", "").split(","):
        raise RuntimeError(f"told to fail on {x}")
    return x * x


def whoami(x: int) -> tuple[int, int]:
    return x, os.getpid()


def sleep_after_marker(x: int) -> int:
    Path(os.environ["KUBEMAP_TEST_MARKER"]).write_text("started")
    time.sleep(60)
    return x


def test_worker_runs_its_slice(store_url: str, tmp_path: Path) -> None:
    task = submit(store_url, double, list(range(10)))
    run = run_worker(tmp_path, slice_env(task, 3, 4, 10))
    assert run.code == EXIT_OK, run.stderr
    assert dict(taskdata.iter_results(task)) == {3: 6, 4: 8, 5: 10, 6: 12}
    assert run.summary == {"v": 1, "succeeded": "3-6", "failed": ""}
    assert run.timing is not None and (run.timing["first"], run.timing["ran"]) == (3, 4)
    assert taskdata.read_errors(task) == {}


def test_raising_function_exits_3_with_traceback(store_url: str, tmp_path: Path) -> None:
    task = submit(store_url, fail_on_five, list(range(8)))
    run = run_worker(tmp_path, slice_env(task, 4, 4, 8))
    assert run.code == EXIT_USER_ERROR, run.stderr
    assert run.summary == {
        "v": 1,
        "succeeded": "4,6-7",
        "failed": "5",
        "error": "ValueError: five is not allowed (got 5)",  # the first failure, for the status
    }
    assert dict(taskdata.iter_results(task)) == {4: 104, 6: 106, 7: 107}
    errors = taskdata.read_errors(task)
    assert list(errors) == [5]
    error = errors[5]
    assert error.type == "ValueError" and error.message == "five is not allowed (got 5)"
    assert 'raise ValueError(f"five is not allowed (got {x})")  # the raising line' in (
        error.traceback
    )
    assert "fail_on_five" in error.traceback and "run_slice" not in error.traceback
    assert "index 5 failed: ValueError: five is not allowed" in run.stderr


def test_unreachable_endpoint_exits_4_naming_it(s3_store_url: str, tmp_path: Path) -> None:
    task = submit(s3_store_url, double, [1, 2, 3])
    env: dict[str, str | None] = {
        **slice_env(task, 0, 3, 3),
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:1",
        "AWS_MAX_ATTEMPTS": "1",
    }
    run = run_worker(tmp_path, env)
    assert run.code == EXIT_INFRA_ERROR
    assert "http://127.0.0.1:1" in run.stderr and "AWS_ENDPOINT_URL_S3" in run.stderr
    assert run.summary is not None and "127.0.0.1:1" in run.summary["infra"]


def test_wrong_keys_put_the_s3_code_and_bucket_in_the_termination_message(
    s3_store_url: str, tmp_path: Path
) -> None:
    task = submit(s3_store_url, double, [1, 2, 3])
    bucket = s3_store_url.removeprefix("s3://").split("/", 1)[0]
    env: dict[str, str | None] = {
        **slice_env(task, 0, 3, 3),
        "AWS_ACCESS_KEY_ID": "replace-with-your-access-key-id",
        "AWS_SECRET_ACCESS_KEY": "replace-with-your-secret-access-key",
        "AWS_MAX_ATTEMPTS": "1",
    }
    run = run_worker(tmp_path, env)
    assert run.code == EXIT_INFRA_ERROR, run.stderr
    assert run.summary is not None
    cause = run.summary["cause"]
    assert cause["kind"] == "store" and cause["code"] == "InvalidAccessKeyId", run.summary
    assert cause["bucket"] == bucket
    assert "InvalidAccessKeyId" in cause["message"] and len(cause["message"]) <= 300
    assert "AWS_ACCESS_KEY_ID" in run.summary["infra"]


def test_task_from_another_python_minor_is_refused_once_for_good(
    store_url: str, tmp_path: Path
) -> None:
    task = submit(store_url, double, [1, 2])
    meta = taskdata.read_meta(task)
    other = "3.99.1" if not sys.version.startswith("3.99") else "3.98.1"
    task.put("task.json", dataclasses.replace(meta, python=other).to_json())
    run = run_worker(tmp_path, slice_env(task, 0, 2, 2))
    assert run.code == EXIT_USAGE_ERROR, run.stderr  # the operator never retries exit 5
    here = platform.python_version()
    assert run.summary is not None
    cause = run.summary["cause"]
    assert cause == {
        "kind": "version",
        "code": "PythonVersionMismatch",
        "python": other,
        "worker": here,
        "message": run.summary["refused"][:300],
    }
    assert (
        f"Python {other}" in run.summary["refused"] and f"Python {here}" in run.summary["refused"]
    )
    assert "image" in run.summary["refused"]  # the fix: another image, or another SDK Python
    assert [line for line in run.stderr.splitlines() if "refusing" in line] == [
        run.stderr.strip()
    ]  # one line, no traceback
    assert list(task.list(RESULTS_PREFIX)) == []
    errors = taskdata.read_errors(task)  # failures() explains both indices
    assert sorted(errors) == [0, 1] and f"Python {other}" in errors[0].message


def test_the_sdk_records_its_python_and_cloudpickle(store_url: str) -> None:
    import cloudpickle

    meta = taskdata.read_meta(submit(store_url, double, [1]))
    assert meta.python == platform.python_version()
    assert meta.cloudpickle == cloudpickle.__version__


def test_corrupt_index_exits_4(store_url: str, tmp_path: Path) -> None:
    task = submit(store_url, double, list(range(5)))
    task.put(INDEX_KEY, b"\xff" * 48)  # offsets far past the end of inputs.bin
    run = run_worker(tmp_path, slice_env(task, 1, 2, 5))
    assert run.code == EXIT_INFRA_ERROR, run.stderr
    assert "inputs.bin" in run.stderr
    assert list(task.list(RESULTS_PREFIX)) == []


def test_missing_module_of_function_exits_4(store_url: str, tmp_path: Path) -> None:
    task = submit(store_url, double, [1])
    task.put("fn.pkl", b"cno_such_module_kubemap_test\nfn\n.")  # a pickled reference
    run = run_worker(tmp_path, slice_env(task, 0, 1, 1))
    assert run.code == EXIT_INFRA_ERROR
    assert "no_such_module_kubemap_test" in run.stderr and "worker image" in run.stderr
    assert run.summary is not None
    assert run.summary["cause"]["code"] == "ModuleNotFoundError", run.summary
    assert run.summary["cause"]["kind"] == "corrupt"


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"KUBEMAP_INDEX": None}, "KUBEMAP_INDEX is not set"),
        ({"KUBEMAP_TASK_URL": None}, "KUBEMAP_TASK_URL is not set"),
        ({"KUBEMAP_COUNT": "two"}, "KUBEMAP_COUNT='two' is not an integer"),
        ({"KUBEMAP_COUNT": "0"}, "KUBEMAP_COUNT=0 must be >= 1"),
        ({"KUBEMAP_INDEX": "4"}, "past KUBEMAP_TOTAL=5"),
        ({"KUBEMAP_TASK_URL": "ftp://x/y"}, "unsupported store URL"),
    ],
)
def test_bad_environment_exits_5(
    tmp_path: Path, env: dict[str, str | None], complaint: str
) -> None:
    base: dict[str, str | None] = {
        "KUBEMAP_TASK_URL": (tmp_path / "nowhere").as_uri(),
        "KUBEMAP_INDEX": "0",
        "KUBEMAP_COUNT": "2",
        "KUBEMAP_TOTAL": "5",
    }
    run = run_worker(tmp_path, {**base, **env})  # None: the variable is unset
    assert run.code == EXIT_USAGE_ERROR
    assert complaint in run.stderr


def test_rerun_of_a_slice_is_harmless(store_url: str, tmp_path: Path) -> None:
    task = submit(store_url, whoami, list(range(6)))
    first = run_worker(tmp_path, slice_env(task, 0, 6, 6))
    before = dict(taskdata.iter_results(task))
    second = run_worker(tmp_path, slice_env(task, 0, 6, 6))
    assert first.code == second.code == EXIT_OK, second.stderr
    assert dict(taskdata.iter_results(task)) == before  # the first writer's pids stay
    assert len(list(task.list(RESULTS_PREFIX))) == 1


def test_retry_runs_only_what_failed(store_url: str, tmp_path: Path) -> None:
    task = submit(store_url, fail_when_told, list(range(10)))
    first = run_worker(tmp_path, {**slice_env(task, 0, 10, 10), "KUBEMAP_TEST_FAIL": "2,7"})
    assert first.code == EXIT_USER_ERROR
    assert first.summary == {
        "v": 1,
        "succeeded": "0-1,3-6,8-9",
        "failed": "2,7",
        "error": "RuntimeError: told to fail on 2",
    }
    second = run_worker(tmp_path, {**slice_env(task, 0, 10, 10, attempt=1)})
    assert second.code == EXIT_OK, second.stderr
    assert second.summary == {"v": 1, "succeeded": "0-9", "failed": ""}
    assert dict(taskdata.iter_results(task)) == {i: i * i for i in range(10)}
    assert str(taskdata.succeeded_indexes(task)) == "0-9"
    assert "0 failed, 8 already done" in second.stderr


def test_sigterm_exits_promptly_and_records_nothing(store_url: str, tmp_path: Path) -> None:
    task = submit(store_url, sleep_after_marker, [1, 2])
    marker = tmp_path / "marker"
    log = tmp_path / "term.log"
    env = {
        **os.environ,
        **slice_env(task, 0, 2, 2),
        "KUBEMAP_TEST_MARKER": str(marker),
        "KUBEMAP_TERMINATION_LOG": str(log),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubemap.worker"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the worker never started the function"
            time.sleep(0.05)
        began = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=20)
        assert time.monotonic() - began < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == EXIT_INFRA_ERROR
    assert proc.stderr is not None and "SIGTERM" in proc.stderr.read()
    assert list(task.list(RESULTS_PREFIX)) == []
    assert not log.exists()


# -- run_slice in process: the path the local backend takes ------------------------------
def test_run_slice_in_process(store_url: str) -> None:
    task = submit(store_url, double, list(range(20)))
    outcome = run_slice(task, 5, 10, fn=lambda x: x - 1)
    assert outcome == SliceOutcome(succeeded=IndexRanges.span(5, 15))
    assert dict(taskdata.iter_results(task)) == {i: i - 1 for i in range(5, 15)}
    again = run_slice(task, 5, 10, attempt=1)
    assert again.skipped == IndexRanges.span(5, 15) and not again.succeeded


def test_unpicklable_result_fails_only_its_index(store_url: str) -> None:
    task = submit(store_url, double, list(range(4)))
    lock = threading.Lock()
    outcome = run_slice(task, 0, 4, fn=lambda x: lock if x == 2 else x)
    assert str(outcome.succeeded) == "0-1,3" and str(outcome.failed) == "2"
    assert "cannot be pickled" in outcome.errors[2].message
    assert dict(taskdata.iter_results(task)) == {0: 0, 1: 1, 3: 3}
    assert list(taskdata.read_errors(task)) == [2]


def test_duplicate_runs_with_different_failures_lose_nothing(store_url: str) -> None:
    """Two runs of one slice that succeed on different indices: the second adds only what
    the first lacked, under another key, and both sets stay readable."""
    task = submit(store_url, double, list(range(6)))

    def flaky(bad: set[int]) -> Callable[[int], int]:
        def fn(x: int) -> int:
            if x in bad:
                raise RuntimeError("flaky")
            return 2 * x

        return fn

    first = run_slice(task, 0, 6, fn=flaky({1, 4}))
    second = run_slice(task, 0, 6, fn=flaky({0}), skip_done=False)
    assert str(first.succeeded) == "0,2-3,5" and str(second.succeeded) == "1-5"
    assert dict(taskdata.iter_results(task)) == {i: 2 * i for i in range(6)}
    assert len(list(task.list(RESULTS_PREFIX))) == 2


def test_the_losing_copy_of_a_speculated_slice_changes_nothing(store_url: str) -> None:
    """A backup copy runs the same slice and attempt (skip_done off, as a pool grant of
    attempt 0 runs it): the copy that writes second finds its key taken and every index
    recorded, and ends as "already done", not as an error; the winner's values stay."""
    task = submit(store_url, double, list(range(8)))
    winner = run_slice(task, 0, 8, fn=lambda x: ("winner", x), skip_done=False)
    loser = run_slice(task, 0, 8, fn=lambda x: ("loser", x), skip_done=False)
    assert winner.succeeded == loser.succeeded == IndexRanges.span(0, 8)
    assert not loser.failed and not loser.unrun
    assert list(task.list(RESULTS_PREFIX)) == [RESULTS_PREFIX + "000000000000-8"]
    assert dict(taskdata.iter_results(task)) == {i: ("winner", i) for i in range(8)}


def test_summary_stays_under_the_limit() -> None:
    every_other = IndexRanges.of(range(0, 20000, 2))
    outcome = SliceOutcome(succeeded=every_other, failed=IndexRanges.of(range(1, 600, 2)))
    line = summary_line(outcome)
    assert len(line) <= 4096 and "succeeded" not in json.loads(line)
    assert json.loads(line)["failed"].startswith("1,3,5")
    huge = SliceOutcome(failed=every_other)
    assert json.loads(summary_line(huge)) == {"v": 1, "truncated": True}
    small = SliceOutcome(succeeded=IndexRanges.span(0, 3), skipped=IndexRanges.of([3]))
    assert summary_line(small) == '{"v":1,"succeeded":"0-3","failed":""}'
