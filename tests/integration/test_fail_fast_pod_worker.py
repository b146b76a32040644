"""Fail-fast in a pod's slice: `python -m kubemap.worker` in a subprocess, on a task written
by the SDK's own upload (which records the failure policy in task.json).

The operator's pod planner counts the indices a worker did not report as not run once the
task fails (core.plan), so the worker must simply leave them alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubemap.api.prepare import upload
from kubemap.contract import EXIT_USER_ERROR
from kubemap.resources.options import RunOptions
from kubemap.stores import Store
from kubemap.task import data as taskdata

pytestmark = pytest.mark.timeout(120)


# Travels by value: the worker process cannot import this test module.
def fail_at_two(x: int) -> int:
    with open(os.path.join(os.environ["KUBEMAP_TEST_CALLS"], f"calls-{x}"), "a") as out:
        out.write("x")
    if x == 2:
        raise ValueError(f"bad input {x}")
    return x * 10


def sdk_task(tmp_path: Path, **options: Any) -> Store:
    opts = RunOptions(store=(tmp_path / "store").as_uri(), **options)
    _, task, _, total = upload(fail_at_two, range(6), opts)
    assert total == 6
    return task


def run_pod(
    tmp_path: Path, task: Store, attempt: int = 0, failures: int | None = None
) -> tuple[int, dict[str, Any], str]:
    calls = tmp_path / "calls"
    calls.mkdir(exist_ok=True)
    log = tmp_path / f"termination-{time.monotonic_ns()}.log"
    env = {
        **os.environ,
        "KUBEMAP_TERMINATION_LOG": str(log),
        "KUBEMAP_TEST_CALLS": str(calls),
        "KUBEMAP_TASK_URL": task.url,
        "KUBEMAP_INDEX": "0",
        "KUBEMAP_COUNT": "6",
        "KUBEMAP_TOTAL": "6",
        "KUBEMAP_ATTEMPT": str(attempt),
        **({"KUBEMAP_FAILURES": str(failures)} if failures is not None else {}),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "kubemap.worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    return proc.returncode, json.loads(log.read_text()), proc.stderr


def calls(tmp_path: Path) -> dict[int, int]:
    def count(x: int) -> int:
        path = tmp_path / "calls" / f"calls-{x}"
        return len(path.read_text()) if path.exists() else 0

    return {x: count(x) for x in range(6)}


def test_a_pod_stops_its_slice_at_a_decisive_failure(tmp_path: Path) -> None:
    task = sdk_task(tmp_path)
    code, summary, stderr = run_pod(tmp_path, task)
    assert code == EXIT_USER_ERROR, stderr
    assert calls(tmp_path) == {0: 1, 1: 1, 2: 1, 3: 0, 4: 0, 5: 0}
    assert (summary["succeeded"], summary["failed"]) == ("0-1", "2")  # 3-5 not reported
    assert dict(taskdata.iter_results(task)) == {0: 0, 1: 10}  # what ran is kept
    assert "3 not run" in stderr


def test_a_pod_runs_on_while_the_failure_has_a_retry_left(tmp_path: Path) -> None:
    task = sdk_task(tmp_path, retries=1)
    code, summary, _ = run_pod(tmp_path, task, attempt=0)
    assert code == EXIT_USER_ERROR
    assert calls(tmp_path) == {x: 1 for x in range(6)}
    assert (summary["succeeded"], summary["failed"]) == ("0-1,3-5", "2")
    # the retry is the index's last attempt: a failure there is decisive
    code, summary, _ = run_pod(tmp_path, task, attempt=1)
    assert code == EXIT_USER_ERROR
    assert calls(tmp_path) == {0: 1, 1: 1, 2: 2, 3: 1, 4: 1, 5: 1}  # results skipped


def test_a_retry_after_an_infrastructure_failure_still_has_its_user_retry(
    tmp_path: Path,
) -> None:
    """Attempt 1 after a lost pod (node gone): the index has failed 0 times, so with
    retries=1 its failure is not decisive and the rest of the slice runs. The operator
    says so in KUBEMAP_FAILURES; the attempt number alone counts the lost pod too."""
    task = sdk_task(tmp_path, retries=1)
    code, summary, _ = run_pod(tmp_path, task, attempt=1, failures=0)
    assert code == EXIT_USER_ERROR
    assert calls(tmp_path) == {x: 1 for x in range(6)}
    assert (summary["succeeded"], summary["failed"]) == ("0-1,3-5", "2")


def test_a_pod_tolerating_failures_runs_every_item(tmp_path: Path) -> None:
    task = sdk_task(tmp_path, min_success_ratio=0.5)
    code, summary, _ = run_pod(tmp_path, task)
    assert code == EXIT_USER_ERROR
    assert calls(tmp_path) == {x: 1 for x in range(6)}
    assert (summary["succeeded"], summary["failed"]) == ("0-1,3-5", "2")
