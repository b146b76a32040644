"""The local backend keeps its worker processes warm between kubemap.map calls of a process.

Counted: the worker PIDs each call ran on (os.getpid() in the function), and the sets of
workers the process forked (processes.WARM_WORKERS.created)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import kubemap
import pytest
from kubemap.backends.local.processes import WARM_WORKERS
from kubemap.resources.maptask import Phase

pytestmark = pytest.mark.timeout(120)


def pid_of(x: int) -> int:
    return os.getpid()


def pid_times_ten(x: int) -> tuple[int, int]:
    return os.getpid(), 10 * x


def slow_pid(x: int) -> int:
    time.sleep(0.2)
    return os.getpid()


def die_on_three(x: int) -> int:
    if x == 3:
        os._exit(9)
    return os.getpid()


@pytest.fixture
def store(tmp_path: Path) -> str:
    return (tmp_path / "store").as_uri()


def pids(store: str, fn: object = pid_of, n: int = 40, workers: int = 2) -> set[int]:
    return set(kubemap.map(fn, range(n), store=store, parallelism=workers, items_per_pod=1))  # type: ignore[arg-type]


def test_two_calls_run_on_the_same_worker_processes(store: str) -> None:
    first = pids(store)
    created = WARM_WORKERS.created
    second = pids(store)
    assert len(first) == 2 and second == first
    assert WARM_WORKERS.created == created  # nothing forked for the second call
    assert os.getpid() not in first


def test_another_function_on_warm_workers_gets_its_own_results(store: str) -> None:
    first = pids(store)
    out = kubemap.map(pid_times_ten, range(30), store=store, parallelism=2, items_per_pod=1)
    assert [v for _, v in out] == [10 * x for x in range(30)]
    assert {p for p, _ in out} == first


def test_more_workers_grow_the_warm_set_and_fewer_shrink_it(store: str) -> None:
    two = pids(store, workers=2)
    four = pids(store, slow_pid, n=8, workers=4)
    assert len(four) == 4 and two <= four  # the two warm ones, plus two new
    one = pids(store, workers=1)
    assert len(one) == 1 and one <= four


def test_a_cancelled_run_does_not_hand_on_its_workers(store: str) -> None:
    before = pids(store)
    run = kubemap.submit(slow_pid, range(40), store=store, parallelism=2, items_per_pod=1)
    time.sleep(0.5)
    run.cancel()
    assert run.wait(timeout=10).phase is Phase.CANCELLED
    for pid in before:  # killed: a cancelled slice must not keep running
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
    after = pids(store)
    assert after.isdisjoint(before) and len(after) == 2


def test_a_worker_that_crashed_is_replaced_and_the_next_call_still_works(store: str) -> None:
    before = pids(store)
    with pytest.raises(kubemap.MapTaskError) as info:
        kubemap.map(die_on_three, range(6), store=store, parallelism=2, items_per_pod=1)
    assert info.value.failures[3].type == "WorkerDied"
    after = pids(store)
    assert len(after) == 2 and after.isdisjoint(before)  # a failed run's workers are not kept


def test_a_worker_killed_while_idle_is_replaced_before_the_next_call(store: str) -> None:
    before = pids(store)
    victim = min(before)
    os.kill(victim, 9)
    time.sleep(0.3)
    after = pids(store)
    assert len(after) == 2 and victim not in after and len(after & before) == 1


SCRIPT = """
import os, sys, kubemap
def f(x):
    return os.getpid()
a = set(kubemap.map(f, range(20), store=sys.argv[1], parallelism=2, items_per_pod=1))
b = set(kubemap.map(f, range(20), store=sys.argv[1], parallelism=2, items_per_pod=1))
print(",".join(str(p) for p in sorted(a | b)), len(a), a == b, flush=True)
"""


def test_the_warm_workers_end_with_the_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), (tmp_path / "s").as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    listed, size, same = done.stdout.split()
    assert (size, same) == ("2", "True")
    for pid in (int(p) for p in listed.split(",")):
        # The script has exited: its workers must be gone, not orphans. (A zombie would have
        # been reaped by init; os.kill raising means the process no longer exists.)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"worker {pid} outlived its interpreter")


def env_value(x: int) -> str:
    return os.environ.get("KUBEMAP_TEST_WARM", "")


def test_workers_see_the_environment_of_the_call(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = pids(store)
    monkeypatch.setenv("KUBEMAP_TEST_WARM", "set later")  # e.g. S3 credentials
    values = kubemap.map(env_value, range(4), store=store, parallelism=2, items_per_pod=1)
    assert values == ["set later"] * 4
    assert pids(store).isdisjoint(first)  # forked anew, with that environment
