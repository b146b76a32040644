"""One table of run outcomes that every backend must answer identically (the run engine).

Each scenario names its inputs, options and the answer: phase, reason, the exact failed and
succeeded index sets, the results, and how many times each index ran (counted by the
function itself in a directory shared with the workers: on the test cluster the pods are
processes on this machine). tests/integration/test_scenarios_local.py runs it on the local
backend; tests/e2e/test_scenarios_cluster.py runs the same table on the test cluster.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubemap
from kubemap.core.ranges import IndexRanges
from kubemap.core.status import Phase, Reason


def _count(where: str, x: Any) -> None:
    with open(os.path.join(where, str(x)), "a") as out:
        out.write("x\n")


def work(item: tuple[str, Any]) -> Any:
    """The scenarios' function: counts its calls, then fails, sleeps or squares."""
    where, x = item
    _count(where, x)
    if isinstance(x, str) and x.startswith("fail"):
        raise ValueError(f"bad input {x}")
    if isinstance(x, str) and x.startswith("sleep"):
        time.sleep(float(x[5:]))
        return x
    return x * x


class _Unloadable:
    """An input that pickles but cannot be loaded by a worker: an infrastructure failure
    of its slice (the task's data is unusable), not a failure of the user's function."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pickle.loads, (b"not a pickle",))


@dataclass(frozen=True)
class Scenario:
    name: str
    inputs: list[Any]
    options: dict[str, Any]
    phase: Phase
    reason: Reason
    failed: str  # the exact failed index set, as ranges ("3" or "")
    succeeded: str | None  # the exact succeeded set, None where timing decides it
    results: list[Any] | None = None  # results(partial=True), None where not checked
    runs: dict[int, int] = field(default_factory=dict)  # index -> times its function ran


SCENARIOS = [
    Scenario(
        "user exception stops the task",
        [0, 1, 2, "fail3", 4, 5],
        {"parallelism": 1},
        Phase.FAILED,
        Reason.FAILED_INDEXES,
        failed="3",
        succeeded="0-2",
        results=[0, 1, 4, None, None, None],
        runs={0: 1, 3: 1, 4: 0, 5: 0},
    ),
    Scenario(
        "retries exhausted",
        [0, "fail1"],
        {"retries": 2, "parallelism": 2, "min_success_ratio": 0.5},
        Phase.SUCCEEDED,
        Reason.COMPLETED,
        failed="1",
        succeeded="0",
        results=[0, None],
        runs={0: 1, 1: 3},
    ),
    Scenario(
        "infrastructure failure spends no user retry",
        [0, 1, _Unloadable(), 3],
        {"parallelism": 2, "min_success_ratio": 0.5, "items_per_pod": 1},
        Phase.SUCCEEDED,
        Reason.COMPLETED,
        failed="2",
        succeeded="0-1,3",
        results=[0, 1, None, 9],
        runs={0: 1, 2: 0},
    ),
    Scenario(
        "timeout",
        ["sleep30", "sleep30"],
        {"parallelism": 2, "timeout": 3},
        Phase.FAILED,
        Reason.DEADLINE,
        failed="",
        succeeded="",
        results=[None, None],
    ),
    Scenario(
        "min_success_ratio 1 fails on one failure",
        [*range(7), "fail7", 8, 9],
        {"parallelism": 1, "min_success_ratio": 1.0},
        Phase.FAILED,
        Reason.FAILED_INDEXES,
        failed="7",
        succeeded="0-6",
        runs={6: 1, 7: 1, 8: 0, 9: 0},
    ),
    Scenario(
        "min_success_ratio 0.9 tolerates one failure",
        [*range(7), "fail7", 8, 9],
        {"parallelism": 2, "min_success_ratio": 0.9},
        Phase.SUCCEEDED,
        Reason.COMPLETED,
        failed="7",
        succeeded="0-6,8-9",
        results=[0, 1, 4, 9, 16, 25, 36, None, 64, 81],
    ),
    Scenario(
        "min_success_ratio 0 tolerates every failure",
        ["fail0", "fail1", 2],
        {"parallelism": 2, "min_success_ratio": 0.0},
        Phase.SUCCEEDED,
        Reason.COMPLETED,
        failed="0-1",
        succeeded="2",
        results=[None, None, 4],
    ),
    Scenario("one item", [7], {}, Phase.SUCCEEDED, Reason.COMPLETED, "", "0", [49], {0: 1}),
    Scenario("empty input", [], {}, Phase.SUCCEEDED, Reason.COMPLETED, "", "", []),
]


def check(scenario: Scenario, backend_options: dict[str, Any], counter: Path) -> kubemap.MapRun:
    """Run one scenario and assert its whole answer; return the run for backend checks."""
    counter.mkdir(parents=True, exist_ok=True)
    items = [(str(counter), x) for x in scenario.inputs]
    run = kubemap.submit(work, iter(items), **{**backend_options, **scenario.options})
    status = run.wait(timeout=300)
    assert (status.phase, status.reason) == (scenario.phase, scenario.reason), status
    failed = IndexRanges.of(run.failures())
    assert str(failed) == scenario.failed, run.failures()
    values = run.results(partial=True)
    done = IndexRanges.of(i for i, v in enumerate(values) if v is not None)
    if scenario.succeeded is not None:
        assert str(done) == scenario.succeeded
        assert status.succeeded == len(done)
    assert status.failed == len(failed)
    assert status.not_run == len(scenario.inputs) - status.succeeded - status.failed
    assert run.not_run() == IndexRanges.span(0, len(scenario.inputs)) - done - failed
    if scenario.results is not None:
        assert values == scenario.results
    for index, times in scenario.runs.items():
        x = scenario.inputs[index]
        ran = counter / str(x)
        got = len(ran.read_text().splitlines()) if ran.exists() else 0
        assert got == times, f"index {index} ran {got} times, expected {times}"
    if scenario.phase is Phase.FAILED and scenario.reason is Reason.FAILED_INDEXES:
        try:
            run.results()
        except kubemap.MapTaskError as error:
            assert set(error.failures) == set(failed)
            assert error.not_run == run.not_run()
            assert f"{len(error.not_run)} not run" in str(error)
        else:
            raise AssertionError("results() of a failed run must raise MapTaskError")
    return run
