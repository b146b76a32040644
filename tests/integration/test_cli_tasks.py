"""The commands that take a task name (results, retry, get, list, cancel, logs) on tasks run
on this machine, with no cluster configured: they find the task in the local store, and the
CLI's lines all count the same way, with an exit status that matches the phase they print.
Each command runs in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

COUNTS = re.compile(r"(\d+)(?:/\d+)? succeeded, (\d+) failed, (\d+) not run")


def kubemap(*args: str, store: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBEMAP_STORE": str(store), "KUBECONFIG": str(cwd / "no-kubeconfig")}
    return subprocess.run(
        [sys.executable, "-m", "kubemap", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=100,
    )


def counts(text: str) -> tuple[int, int, int]:
    found = COUNTS.search(text)
    assert found, f"no counts in {text!r}"
    return int(found[1]), int(found[2]), int(found[3])


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "fns.py").write_text(
        "import time\n"
        "def slow_after_ten(x):\n"
        "    if x >= 10:\n"
        "        time.sleep(30)\n"
        "    return x\n"
        "def bad_3_7(x):\n"
        "    if x in (3, 7):\n"
        "        raise ValueError(f'bad {x}')\n"
        "    return x * 10\n"
    )
    (tmp_path / "200.txt").write_text("".join(f"{i}\n" for i in range(200)))
    (tmp_path / "10.txt").write_text("".join(f"{i}\n" for i in range(10)))
    return tmp_path


def timed_out_run(work: Path) -> subprocess.CompletedProcess[str]:
    return kubemap(
        "run", "fns.py:slow_after_ten", "--inputs", "200.txt", "--name", "tt", "--timeout", "4",
        "-p", "4", "--items-per-pod", "1",
        store=work / "store", cwd=work,
    )  # fmt: skip


def test_a_timed_out_run_writes_what_finished_and_names_the_cli_commands(work: Path) -> None:
    done = timed_out_run(work)
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 200  # one line per input, null where there is no result
    finished = [i for i, value in enumerate(lines) if value is not None]
    assert finished and finished == lines[: len(finished)] == list(range(len(finished)))
    assert counts(done.stderr) == (len(finished), 0, 200 - len(finished))
    assert "timed out" in done.stderr
    assert "kubemap results tt --partial" in done.stderr and "kubemap retry tt" in done.stderr
    assert "results(partial=True)" not in done.stderr  # the Python call is not the CLI's advice


def test_results_of_a_timed_out_local_task_need_partial_and_exit_1(work: Path) -> None:
    run = timed_out_run(work)
    finished = sum(1 for line in run.stdout.splitlines() if line != "null")
    shown = kubemap("results", "tt", store=work / "store", cwd=work)
    assert shown.returncode == 1 and shown.stdout == ""
    assert "timed out" in shown.stderr and "kubemap results tt --partial" in shown.stderr
    assert counts(shown.stderr) == (finished, 0, 200 - finished)
    partial = kubemap("results", "tt", "--partial", store=work / "store", cwd=work)
    # --partial asks for what there is: 0 unless an index failed (as for a cluster task)
    assert partial.returncode == 0, partial.stderr
    assert partial.stdout == run.stdout  # the same lines as the run wrote
    assert counts(partial.stderr) == (finished, 0, 200 - finished)


def test_retry_and_results_count_alike_and_exit_as_the_phase_says(work: Path) -> None:
    store = work / "store"
    first = kubemap(
        "run", "fns.py:bad_3_7", "--inputs", "10.txt", "--name", "t9", "-p", "1",
        "--items-per-pod", "1", "--min-success-ratio", "0", store=store, cwd=work,
    )  # fmt: skip
    assert first.returncode == 0 and "2 of 10 inputs failed (tolerated" in first.stderr
    # The rerun stops at index 3's failure (ratio 1, one worker): index 7 does not run again.
    again = kubemap("retry", "t9", "-p", "1", store=store, cwd=work)
    shown = kubemap("results", "t9", store=store, cwd=work)
    listed = kubemap("get", "t9", store=store, cwd=work)
    assert again.returncode == shown.returncode == 1
    assert counts(again.stderr) == counts(shown.stderr) == counts(listed.stdout)
    assert sum(counts(again.stderr)) == 10
    assert "Failed" in again.stderr and "Failed" in listed.stdout
    assert len(set(COUNTS.findall(listed.stdout))) == 1, listed.stdout  # no other tally in it
    # Every index tried (ratio 0): the failures left are tolerated, so the task Succeeded.
    tolerant = kubemap("retry", "t9", "--min-success-ratio", "0", store=store, cwd=work)
    shown = kubemap("results", "t9", store=store, cwd=work)
    assert counts(tolerant.stderr) == counts(shown.stderr) == (8, 2, 0)
    assert "Succeeded" in tolerant.stderr and "tolerated" in tolerant.stderr
    assert tolerant.returncode == 0 and shown.returncode == 0  # as `kubemap run` does
    assert [json.loads(x) for x in shown.stdout.splitlines()].count(None) == 2


def test_list_get_cancel_logs_find_local_tasks_without_a_cluster(work: Path) -> None:
    store = work / "store"
    timed_out_run(work)
    kubemap(
        "run", "fns.py:bad_3_7", "--inputs", "10.txt", "--name", "t9", "-p", "1",
        "--items-per-pod", "1", store=store, cwd=work,
    )  # fmt: skip
    listed = kubemap("list", store=store, cwd=work)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert listed.stdout.split()[:2] == ["NAME", "WHERE"]
    assert rows["tt"][1:4] == rows["t9"][1:4] == ["local", "Function", "Failed"]
    assert set(rows) == {"tt", "t9"}  # the store's tasks and nothing else
    shown = kubemap("results", "t9", store=store, cwd=work)
    succeeded, failed, not_run = counts(shown.stderr)
    assert rows["t9"][4:7] == [f"{succeeded}/10", str(failed), str(not_run)]
    assert "no cluster" in listed.stderr  # says it could list only this machine's tasks

    got = kubemap("get", "tt", store=store, cwd=work)
    assert got.returncode == 0, got.stderr
    assert "where:       local" in got.stdout and "phase:       Failed" in got.stdout
    assert "reason:      DeadlineExceeded" in got.stdout and (store / "tt").as_uri() in got.stdout

    cancel = kubemap("cancel", "tt", store=store, cwd=work)
    assert cancel.returncode == 0 and "already Failed: nothing to cancel" in cancel.stdout
    logs = kubemap("logs", "t9", store=store, cwd=work)
    assert logs.returncode == 1 and "kubemap results t9 --verbose" in logs.stderr

    missing = kubemap("get", "nosuch", store=store, cwd=work)
    assert missing.returncode == 1
    assert "no task 'nosuch'" in missing.stderr and "no cluster" in missing.stderr
    assert "backend='local'" not in missing.stderr  # an option these commands do not take
    cluster_only = kubemap("list", "--backend", "kubernetes", store=store, cwd=work)
    assert cluster_only.returncode == 1 and "KUBECONFIG" in cluster_only.stderr
    assert "--backend local" in cluster_only.stderr
