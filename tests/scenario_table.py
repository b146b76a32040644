"""One table of run outcomes that every backend must answer identically (the run engine).

Each scenario names its inputs, options and the answer: phase, reason, the exact failed and
succeeded index sets, the results, and how many times each index ran (counted by the
function itself in a directory shared with the workers: on the test cluster the pods are
processes on this machine). tests/integration/test_scenarios_local.py runs it on the local
backend; tests/e2e/test_scenarios_cluster.py runs the same table on the test cluster.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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


# == The conformance matrix: every feature under every condition, one answer per condition ==
#
# The table above checks the run engine through submit(). The matrix below checks what a
# user sees through each feature (map, submit and its results/failures/not_run/status,
# as_completed, imap, return_exceptions, map over kubemap.files(), retry, the Executor,
# joblib, the CLI's run, results and retry) under each condition (all succeed, a tolerated failure, fail-fast,
# cancelled, timed out, partly cached, retried). A condition is data: its items, which of
# them fail, sleep or fail once, its options, and its ANSWER: which indices succeeded
# (their values are x*x), failed and never ran, what a raising surface raises, and the exit
# code of the CLI. A feature is an adapter that runs the condition its own way and reports
# what each of its surfaces showed (a Seen); `mismatches` compares every Seen with the one
# answer. So each feature, on each backend, is held to the same expectation; the local run
# is tests/integration/test_conformance_local.py, the cluster run
# tests/e2e/test_scenarios_cluster.py.
#
# The function is told how to behave by marker files in a directory shared with the
# workers (on the test cluster the pods are processes on this machine), not by its inputs:
# so the inputs are plain integers whose answer is x*x, a retry can "fix" a failure by
# removing its marker, and `kubemap retry` (which cannot change the function) can too.

N_ITEMS = 6
BEAT = 0.05  # seconds between a sleeping call's heartbeats


class BadInput(ValueError):
    """The user's own exception class: features must give it back as itself (or as an
    error catchable as it), never as a bare RuntimeError or a non-exception."""


def conform(item: tuple[str, int] | list[Any]) -> int:
    """The matrix's function: counts its call, then sleeps, fails or fails once as the
    markers in `where` say, else returns x*x."""
    where, x = item
    _count(where, x)
    sleep = os.path.join(where, f"sleep-{x}")
    if os.path.exists(sleep):
        with open(sleep) as seconds:
            end = time.monotonic() + float(seconds.read() or "30")
        beat = os.path.join(where, f"beat-{x}")
        while time.monotonic() < end:  # a heartbeat shows whether it still runs
            with open(beat, "a"):
                os.utime(beat)
            time.sleep(BEAT)
    if os.path.exists(os.path.join(where, f"fail-{x}")):
        raise BadInput(f"bad input {x}")
    flaky = os.path.join(where, f"flaky-{x}")
    if os.path.exists(flaky):
        os.remove(flaky)
        raise BadInput(f"flaky input {x} (fails once)")
    return int(x) * int(x)


@dataclass(frozen=True)
class Answer:
    """The observable answer of a run over indices 0..total-1."""

    succeeded: frozenset[int]
    failed: frozenset[int]
    raises: type[BaseException] | None  # what results()/map()/... raise; None: nothing
    exit_code: int  # of `kubemap run`, `kubemap results` and `kubemap retry`
    total: int = N_ITEMS

    @property
    def not_run(self) -> frozenset[int]:
        return frozenset(range(self.total)) - self.succeeded - self.failed

    @property
    def counts(self) -> tuple[int, int, int]:
        """(succeeded, failed, not run): the three counts every message gives."""
        return len(self.succeeded), len(self.failed), len(self.not_run)

    @property
    def stopped(self) -> bool:
        """Cancelled or timed out: stopped from outside, not by its failures."""
        return self.raises in (kubemap.CancelledError, kubemap.TimeoutError)

    @property
    def partial_exit_code(self) -> int:
        """`kubemap results --partial`: 0 for a stopped task none of whose indices failed."""
        return 0 if self.stopped and not self.failed else self.exit_code

    def value(self, index: int) -> int:
        return index * index


def _answer(succeeded: Any, failed: Any = (), raises: type[BaseException] | None = None) -> Answer:
    done = frozenset(succeeded)
    bad = frozenset(failed)
    exit_code = 0 if raises is None else 1  # tolerated failures exit 0, as the run succeeded
    return Answer(done, bad, raises, exit_code)


ALL = range(N_ITEMS)


@dataclass(frozen=True)
class Condition:
    name: str
    options: dict[str, Any]
    answer: Answer
    after_retry: Answer  # after MapRun.retry() / `kubemap retry`, sleeps removed, faults kept
    independent: Answer | None = None  # where each call stands alone (Executor, joblib)
    fail: frozenset[int] = frozenset()  # indices whose function raises BadInput every time
    flaky: frozenset[int] = frozenset()  # ... only on their first attempt
    sleep: dict[int, float] = field(default_factory=dict)  # index -> seconds it sleeps
    cached: frozenset[int] = frozenset()  # indices in the cache before the run (cache=True)
    cancel_when_started: frozenset[int] = frozenset()  # cancel once these indices started
    deadline: bool = False  # run with the backend's short timeout (Backend.deadline)
    runs: dict[int, int] = field(default_factory=dict)  # index -> calls in the run under test

    @property
    def cancelled(self) -> bool:
        return bool(self.cancel_when_started)

    def items(self, where: Path) -> list[tuple[str, int]]:
        return [(str(where), x) for x in range(self.answer.total)]

    def prepare(self, where: Path) -> None:
        """Write the markers that make the function behave as this condition says."""
        where.mkdir(parents=True, exist_ok=True)
        for index in self.fail:
            (where / f"fail-{index}").write_text("")
        for index in self.flaky:
            (where / f"flaky-{index}").write_text("")
        for index, seconds in self.sleep.items():
            (where / f"sleep-{index}").write_text(str(seconds))

    def unstick(self, where: Path) -> None:
        """Before a retry: the sleeps that got the run cancelled or timed out are gone
        (the user fixed what was slow); the failures stay (nobody fixed those)."""
        for index in self.sleep:
            (where / f"sleep-{index}").unlink(missing_ok=True)


# Stuck until the run is stopped; a call still beating after the stop fails its cell
# (work must not go on after a cancel or a timeout).
_STUCK = {index: 600.0 for index in range(2, N_ITEMS)}
# One slice per index, two at a time: indices 0 and 1 finish, 2 and 3 are running (in their
# sleep) when the run stops, 4 and 5 never start: the same answer on every backend.
_TWO_AT_A_TIME = {"parallelism": 2, "items_per_pod": 1}

CONDITIONS = [
    Condition(
        "all succeed",
        {"parallelism": 2},
        answer=_answer(ALL),
        after_retry=_answer(ALL),
        runs=dict.fromkeys(ALL, 1),
    ),
    Condition(
        "one failure tolerated",
        {"parallelism": 2, "min_success_ratio": 0.8},
        answer=_answer({0, 1, 3, 4, 5}, {2}),
        after_retry=_answer({0, 1, 3, 4, 5}, {2}),
        fail=frozenset({2}),
        runs={0: 1, 2: 1, 5: 1},
    ),
    Condition(
        "fail-fast",
        {"parallelism": 1, "items_per_pod": 1, "min_success_ratio": 1.0},
        answer=_answer({0, 1}, {2}, kubemap.MapTaskError),
        after_retry=_answer({0, 1}, {2}, kubemap.MapTaskError),
        independent=_answer({0, 1, 3, 4, 5}, {2}),
        fail=frozenset({2}),
        runs={0: 1, 1: 1, 2: 1, 3: 0, 4: 0, 5: 0},
    ),
    Condition(
        "cancelled",
        _TWO_AT_A_TIME,
        answer=_answer({0, 1}, (), kubemap.CancelledError),
        after_retry=_answer(ALL),
        sleep=_STUCK,
        cancel_when_started=frozenset({2, 3}),
        runs={0: 1, 1: 1, 4: 0, 5: 0},
    ),
    Condition(
        "timed out",
        _TWO_AT_A_TIME,
        answer=_answer({0, 1}, (), kubemap.TimeoutError),
        after_retry=_answer(ALL),
        sleep=_STUCK,
        deadline=True,
        runs={0: 1, 1: 1, 4: 0, 5: 0},
    ),
    Condition(
        "partly cached",
        # 5 of the caller's 6 inputs succeed: the ratio holds for the caller's inputs,
        # though the run itself only holds the 3 misses (1, 3, 5), 1 of them failing. One
        # at a time, so that a ratio counted over the misses alone stops the run at 3, on
        # every backend, instead of by how the race between 3 and 5 goes.
        {"parallelism": 1, "items_per_pod": 1, "min_success_ratio": 0.8, "cache": True},
        answer=_answer({0, 1, 2, 4, 5}, {3}),
        after_retry=_answer({0, 1, 2, 4, 5}, {3}),
        fail=frozenset({3}),
        cached=frozenset({0, 2, 4}),
        runs={0: 0, 1: 1, 2: 0, 3: 1, 4: 0, 5: 1},
    ),
    Condition(
        "retried",
        {"parallelism": 2, "retries": 1},
        answer=_answer(ALL),
        after_retry=_answer(ALL),
        flaky=frozenset({2}),
        runs={0: 1, 1: 1, 2: 2, 3: 1},
    ),
]


_NOT_SEEN: Any = object()


@dataclass
class Seen:
    """What one surface of a feature showed; None (or _NOT_SEEN for `raised`) where that
    surface shows nothing of the kind."""

    values: dict[int, Any] | None = None  # index -> result, for the indices given a result
    complete: bool = True  # False: values are only some of them (those before a raise)
    failed: set[int] | None = None
    not_run: set[int] | None = None
    counts: tuple[int, int, int] | None = None  # (succeeded, failed, not run) as it said them
    message_counts: tuple[int, int, int] | None = None  # ... as its message printed them
    message_index: int | None = None  # the index its message names as failed
    failed_count: int | None = None  # where a message names only how many failed
    raised: BaseException | None = _NOT_SEEN
    exit_code: int | None = None
    expected_exit: int | None = None  # the command's own code for how it was stopped (130)
    errors: dict[int, Any] = field(default_factory=dict)  # index -> the error in its place
    repeated: list[int] = field(default_factory=list)  # indices given more than once
    note: str = ""  # what it printed, for the failure message

    def observed(self) -> bool:
        """Whether it showed anything the answer is checked against."""
        shown = (self.values, self.failed, self.not_run, self.counts, self.exit_code)
        return any(x is not None for x in shown) or self.raised is not _NOT_SEEN


@dataclass(frozen=True)
class Expectation:
    """The answer a feature is held to, and how the feature shows it."""

    answer: Answer
    raises: bool = True  # False: return_exceptions surfaces never raise for an index


def mismatches(surface: str, seen: Seen, expect: Expectation) -> list[str]:
    """Every way `seen` differs from the answer, one line each ("" when it agrees)."""
    answer = expect.answer
    out: list[str] = []

    def differ(what: str, expected: Any, got: Any) -> None:
        if expected != got:
            out.append(f"{surface}: {what}: expected {expected}, saw {got}")

    if seen.values is not None:
        wrong = {i: v for i, v in seen.values.items() if v != answer.value(i)}
        if wrong:
            out.append(f"{surface}: wrong values {wrong}")
        extra = set(seen.values) - answer.succeeded
        if extra:
            out.append(f"{surface}: results for indices that did not succeed: {sorted(extra)}")
        if seen.complete:
            differ("indices with a result", sorted(answer.succeeded), sorted(seen.values))
    if seen.failed is not None:
        differ("failed indices", sorted(answer.failed), sorted(seen.failed))
    if seen.not_run is not None:
        differ("not-run indices", sorted(answer.not_run), sorted(seen.not_run))
    if seen.counts is not None:
        differ("counts (succeeded, failed, not run)", answer.counts, seen.counts)
    if seen.message_counts is not None:
        differ("counts in its message", answer.counts, seen.message_counts)
    if seen.message_index is not None and seen.message_index not in answer.failed:
        out.append(f"{surface}: its message names index {seen.message_index} as failed")
    if seen.failed_count is not None:
        differ("failed count", len(answer.failed), seen.failed_count)
    if seen.repeated:
        out.append(f"{surface}: indices given more than once: {seen.repeated}")
    if seen.raised is not _NOT_SEEN:
        expected = answer.raises if expect.raises else None
        if expected is None and seen.raised is not None:
            out.append(f"{surface}: raised {type(seen.raised).__name__}: {seen.raised}")
        elif expected is not None and not isinstance(seen.raised, expected):
            got = "nothing" if seen.raised is None else repr(seen.raised)[:200]
            out.append(f"{surface}: expected {expected.__name__}, raised {got}")
    if seen.exit_code is not None:
        code = seen.expected_exit if seen.expected_exit is not None else answer.exit_code
        differ(f"exit code ({seen.note.strip()[-300:]!r})", code, seen.exit_code)
    for index, error in seen.errors.items():
        if index not in answer.failed:
            continue
        if not isinstance(error, Exception):
            out.append(f"{surface}: index {index}'s error is not an exception: {error!r}")
        elif not isinstance(error, BadInput):  # the user's own class, or catchable as it
            out.append(
                f"{surface}: index {index}'s error is not catchable as the user's BadInput: "
                f"{type(error).__name__}: {error}"
            )
    return out


# -- where the matrix runs ----------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """A backend as the matrix uses it: fresh SDK options for each submit (a cluster task
    needs a new name each time), and the CLI arguments that point at the same place."""

    name: str
    options: Callable[[], dict[str, Any]]
    run_args: tuple[str, ...]  # `kubemap run ... <these>`
    task_args: tuple[str, ...]  # `kubemap results NAME <these>`, `kubemap retry NAME <these>`
    retry_args: tuple[str, ...] = ()  # `kubemap retry` only (--backend kubernetes)
    # `kubemap retry` takes the run's options (--retries, --parallelism, ...) for a local
    # task only: a MapTask reruns with its own spec
    retry_takes_options: bool = True
    deadline: float = 2.0  # the "timed out" condition's timeout: 0 and 1 finish well within
    target: str = "scenario_table:conform"  # the CLI's MODULE:FUNCTION


def local_backend(store: Path) -> Backend:
    url = str(store)
    return Backend(
        "local", lambda: {"store": url}, ("--store", url), ("--store", url), deadline=2.0
    )


def invoke_cli(args: list[str]) -> tuple[int, str, str]:
    """The kubemap command in this process (a subprocess costs a second of imports per
    call): exit code, stdout, stderr."""
    from click.testing import CliRunner
    from kubemap.cli.main import main

    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# -- the features ---------------------------------------------------------------------------
COUNTS = re.compile(r"(\d+) succeeded, (\d+) failed, (\d+) not run")
TOLERATED = re.compile(r"(\d+) of (\d+) inputs failed")
FAILED_INDEX = re.compile(r"index (\d+) failed")


def counts_in(text: str) -> tuple[int, int, int] | None:
    """The last "S succeeded, F failed, N not run" a message gives."""
    found = COUNTS.findall(text)
    return tuple(int(n) for n in found[-1]) if found else None  # type: ignore[return-value]


def _is_error(value: Any) -> bool:
    return isinstance(value, (BaseException, kubemap.RemoteError))


def _never_ran(value: Any) -> bool:
    """An error given in the place of an index that never ran (type "NotRun"), or a run's
    own stop (timeout, cancel) given to a call that never ran."""
    if isinstance(value, kubemap.RemoteFailure):
        value = value.error
    if isinstance(value, (kubemap.TimeoutError, kubemap.CancelledError)):
        return True
    return getattr(value, "type", None) == "NotRun"


def _classified(pairs: list[tuple[int, Any]]) -> Seen:
    """Index -> what a surface gave in its place: a value, the index's error, or NotRun."""
    seen = Seen(values={}, failed=set(), not_run=set())
    assert seen.values is not None and seen.failed is not None and seen.not_run is not None
    given: set[int] = set()
    for index, value in pairs:
        if index in given:
            seen.repeated.append(index)
        given.add(index)
        if _never_ran(value):
            seen.not_run.add(index)
        elif _is_error(value):
            seen.failed.add(index)
            seen.errors[index] = value
        else:
            seen.values[index] = value
    return seen


def _from_error(error: BaseException) -> Seen:
    """What a raised error says: MapTaskError's sets and counts, any error's message counts."""
    if isinstance(error, kubemap.MapTaskError):
        return Seen(
            failed=set(error.failures),
            not_run=set(error.not_run),
            counts=(error.succeeded, len(error.failures), len(error.not_run)),
            message_counts=counts_in(str(error)),
            message_index=int(named[1]) if (named := FAILED_INDEX.search(str(error))) else None,
            raised=error,
        )
    return Seen(message_counts=counts_in(str(error)), raised=error)


def _wait_for(done: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.02)


def _options(cond: Condition, backend: Backend) -> dict[str, Any]:
    options = {**backend.options(), **cond.options}
    if cond.deadline:
        options["timeout"] = backend.deadline
    return options


def _prefill(cond: Condition, backend: Backend, where: Path) -> None:
    """Put the condition's cached indices in the cache (a run of only those), then forget
    their calls: the run under test starts counting from zero."""
    if not cond.cached:
        return
    items = [(str(where), x) for x in sorted(cond.cached)]
    assert kubemap.map(conform, items, **{**backend.options(), "cache": True}) == [
        x * x for x in sorted(cond.cached)
    ]
    for x in cond.cached:
        (where / str(x)).unlink()


def _cancel_when_started(cond: Condition, where: Path, cancel: Callable[[], Any]) -> None:
    if cond.cancelled:
        _wait_for(
            lambda: all((where / str(x)).exists() for x in cond.cancel_when_started),
            f"indices {sorted(cond.cancel_when_started)} to start",
        )
        cancel()


def _start(cond: Condition, backend: Backend, where: Path) -> kubemap.MapRun:
    """submit() the condition and stop it as it says; return the finished run."""
    _prefill(cond, backend, where)
    run = kubemap.submit(conform, cond.items(where), **_options(cond, backend))
    _cancel_when_started(cond, where, run.cancel)
    run.wait(timeout=300, progress=False)
    return run


def _run_surfaces(run: kubemap.MapRun) -> dict[str, Seen]:
    """Everything a finished MapRun answers: status, results, failures, not_run."""
    status = run.status()
    seen = {
        "status()": Seen(counts=(status.succeeded, status.failed, status.not_run)),
        "failures()": Seen(failed=set(run.failures())),
        "not_run()": Seen(not_run=set(run.not_run())),
        "results(partial=True)": Seen(
            values={i: v for i, v in enumerate(run.results(partial=True)) if v is not None}
        ),
    }
    try:
        values = run.results()
    except kubemap.KubemapError as error:
        seen["results()"] = _from_error(error)
    else:
        seen["results()"] = Seen(values={i: v for i, v in enumerate(values) if v is not None})
        seen["results()"].raised = None
    seen["results(return_exceptions=True)"] = _classified(
        list(enumerate(run.results(return_exceptions=True)))
    )
    return seen


def feature_submit(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    return _run_surfaces(_start(cond, backend, where))


def feature_map(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    _prefill(cond, backend, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tolerated-failures warning
            values = kubemap.map(conform, cond.items(where), **_options(cond, backend))
    except kubemap.KubemapError as error:
        return {"map()": _from_error(error)}
    seen = Seen(values={i: v for i, v in enumerate(values) if v is not None}, raised=None)
    return {"map()": seen}


def conform_file(file: kubemap.File) -> int:
    """conform over a file that holds "<where>\t<x>": the same answer, read from a file."""
    where, x = file.read().decode().split("\t")
    return conform((where, int(x)))


def feature_files(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    """map() over kubemap.files(): one file per item, listed in key order."""
    folder = where / "inputs"
    folder.mkdir(exist_ok=True)
    for item_where, x in cond.items(where):
        (folder / f"item-{x:04d}.txt").write_text(f"{item_where}\t{x}")
    listed = kubemap.files(str(folder / "item-*.txt"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tolerated-failures warning
            values = kubemap.map(conform_file, listed, **_options(cond, backend))
    except kubemap.KubemapError as error:
        return {"map(files())": _from_error(error)}
    seen = Seen(values={i: v for i, v in enumerate(values) if v is not None}, raised=None)
    return {"map(files())": seen}


def feature_return_exceptions(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    _prefill(cond, backend, where)
    try:
        values = kubemap.map(
            conform, cond.items(where), return_exceptions=True, **_options(cond, backend)
        )
    except kubemap.KubemapError as error:
        return {"map(return_exceptions=True)": _from_error(error)}
    seen = _classified(list(enumerate(values)))
    seen.raised = None
    return {"map(return_exceptions=True)": seen}


def _as_completed(
    cond: Condition, backend: Backend, where: Path, *, return_exceptions: bool
) -> Seen:
    _prefill(cond, backend, where)
    run = kubemap.submit(conform, cond.items(where), **_options(cond, backend))
    _cancel_when_started(cond, where, run.cancel)
    pairs: list[tuple[int, Any]] = []
    try:
        for pair in run.as_completed(return_exceptions=return_exceptions, timeout=300):
            pairs.append(pair)
    except kubemap.KubemapError as error:
        seen = _from_error(error)
        given = _classified(pairs)
        seen.values, seen.repeated = given.values, given.repeated
        return seen
    seen = _classified(pairs)
    seen.raised = None
    return seen


def feature_as_completed(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    return {"as_completed()": _as_completed(cond, backend, where, return_exceptions=False)}


def feature_as_completed_exc(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    seen = _as_completed(cond, backend, where, return_exceptions=True)
    return {"as_completed(return_exceptions=True)": seen}


def feature_imap(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    _prefill(cond, backend, where)
    got: list[Any] = []
    raised: BaseException | None = None
    try:
        for value in kubemap.imap(conform, cond.items(where), **_options(cond, backend)):
            got.append(value)
    except kubemap.KubemapError as error:
        raised = error
    seen = _from_error(raised) if raised is not None else Seen(raised=None)
    # in input order: where it raises, only the results before the first gap came out
    seen.values = {i: v for i, v in enumerate(got) if v is not None}
    seen.complete = raised is None
    return {"imap()": seen}


def feature_imap_exc(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    _prefill(cond, backend, where)
    values: list[Any] = []
    try:
        for value in kubemap.imap(
            conform, cond.items(where), return_exceptions=True, **_options(cond, backend)
        ):
            values.append(value)
    except kubemap.KubemapError as error:
        return {"imap(return_exceptions=True)": _from_error(error)}
    # an index left out shows as missing from all three sets
    seen = _classified(list(enumerate(values)))
    seen.raised = None
    return {"imap(return_exceptions=True)": seen}


def feature_retry(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    run = _start(cond, backend, where)
    cond.unstick(where)
    run.retry()
    run.wait(timeout=300, progress=False)
    return _run_surfaces(run)


def _executor_options(cond: Condition, backend: Backend) -> dict[str, Any]:
    options = _options(cond, backend)
    options["max_workers"] = options.pop("parallelism", None)
    return options


def feature_executor_submit(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    pairs: list[tuple[int, Any]] = []
    with kubemap.Executor(**_executor_options(cond, backend)) as executor:
        futures = [executor.submit(conform, item) for item in cond.items(where)]
        for index, future in enumerate(futures):
            error = future.exception(timeout=300)
            pairs.append((index, error if error is not None else future.result()))
    seen = _classified(pairs)
    stops = [value for _, value in pairs if _never_ran(value)]
    surfaces = {"Executor.submit().result()": seen}
    if stops:  # a call the run never ran raises what results() raises (the run's stop)
        surfaces["result() of a call never run"] = Seen(raised=stops[0])
    return surfaces


def feature_executor_map(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    got: list[Any] = []
    raised: BaseException | None = None
    with kubemap.Executor(**_executor_options(cond, backend)) as executor:
        try:
            for value in executor.map(conform, cond.items(where), timeout=300):
                got.append(value)
        except Exception as error:
            raised = error
    seen = Seen(values=dict(enumerate(got)), complete=raised is None, raised=raised)
    return {"Executor.map()": seen}


def feature_joblib(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    import joblib
    import kubemap.joblib_backend  # noqa: F401  (registers the "kubemap" backend)

    options = _options(cond, backend)
    n_jobs = options.pop("parallelism", 2)
    if "backend" in options:
        options["kubemap_backend"] = options.pop("backend")
    got: list[Any] = []
    raised: BaseException | None = None
    with joblib.parallel_config(backend="kubemap", **options):
        try:
            got = joblib.Parallel(n_jobs=n_jobs)(
                joblib.delayed(conform)(item) for item in cond.items(where)
            )
        except Exception as error:
            raised = error
    seen = Seen(values=dict(enumerate(got)), complete=raised is None, raised=raised)
    return {"joblib.Parallel": seen}


_FLAGS = {
    "parallelism": "--parallelism",
    "items_per_pod": "--items-per-pod",
    "retries": "--retries",
    "min_success_ratio": "--min-success-ratio",
    "timeout": "--timeout",
}


def _flags(options: dict[str, Any], allowed: set[str]) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        if key in allowed:
            out += [_FLAGS[key], str(value)]
    return out


def _cli_seen(code: int, out: str, err: str) -> Seen:
    values = {}
    for index, line in enumerate(out.splitlines()):
        value = json.loads(line)
        if value is not None:
            values[index] = value
    tolerated = TOLERATED.findall(err)
    return Seen(
        values=values,
        counts=counts_in(err),
        failed_count=int(tolerated[-1][0]) if tolerated else None,
        exit_code=code,
        note=err,
    )


def _cli_results(name: str, backend: Backend, answer: Answer) -> dict[str, Seen]:
    """`kubemap results NAME`; for a stopped task (cancelled, timed out), which prints no
    results without it, `kubemap results NAME --partial` too."""
    seen = _cli_seen(*invoke_cli(["results", name, *backend.task_args]))
    if not answer.stopped:
        return {"kubemap results": seen}
    seen.values = None  # a stopped task's results need --partial
    partial = _cli_seen(*invoke_cli(["results", name, "--partial", *backend.task_args]))
    partial.expected_exit = answer.partial_exit_code
    return {"kubemap results": seen, "kubemap results --partial": partial}


def feature_cli_run(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    inputs = where.parent / f"{where.name}-inputs.jsonl"
    inputs.write_text("".join(json.dumps(list(item)) + "\n" for item in cond.items(where)))
    flags = _flags(_options(cond, backend), set(_FLAGS))
    args = ["run", backend.target, "--inputs", str(inputs), "--format", "jsonl"]
    args += [*backend.run_args, *flags]
    if not cond.cancelled:
        return {"kubemap run": _cli_seen(*invoke_cli(args))}
    # Ctrl-C needs a process of its own: SIGINT once the condition's indices started
    target = str(Path(__file__).resolve()) + ":conform"
    process = subprocess.Popen(
        [sys.executable, "-m", "kubemap", *[target if a == backend.target else a for a in args]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _cancel_when_started(cond, where, lambda: process.send_signal(signal.SIGINT))
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    seen = _cli_seen(process.returncode, out, err)
    seen.expected_exit = 130  # kubemap run --help: "130 when interrupted"
    seen.values = None  # an interrupted run writes no results: `kubemap results` does
    named = re.search(r"task (\S+) ", err)
    assert named, err
    return {"kubemap run (Ctrl-C)": seen, **_cli_results(named[1], backend, cond.answer)}


def feature_cli_results(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    run = _start(cond, backend, where)
    return _cli_results(run.name, backend, cond.answer)


def feature_cli_retry(cond: Condition, backend: Backend, where: Path) -> dict[str, Seen]:
    run = _start(cond, backend, where)
    cond.unstick(where)
    flags = []
    if backend.retry_takes_options:
        flags = _flags(cond.options, {"parallelism", "retries", "min_success_ratio"})
    code, _out, err = invoke_cli(
        ["retry", run.name, *backend.task_args, *backend.retry_args, *flags]
    )
    retried = Seen(counts=counts_in(err), exit_code=code, note=err)
    return {"kubemap retry": retried, **_cli_results(run.name, backend, cond.after_retry)}


@dataclass(frozen=True)
class Feature:
    name: str
    run: Callable[[Condition, Backend, Path], dict[str, Seen]]
    skip: frozenset[str] = frozenset()  # conditions it cannot express (and why, below)
    after_retry: bool = False  # answers with the condition's after_retry
    independent: bool = False  # each call stands alone (concurrent.futures, joblib)
    raises: bool = True  # False: gives errors in place and never raises for an index
    raises_first: bool = False  # raises the first call's error in input order
    # An iterator cannot put an error in an index's place: without return_exceptions it
    # raises MapTaskError at the end for any index without a result, tolerated or not.
    streams: bool = False

    def expectation(self, cond: Condition) -> Expectation:
        answer = cond.after_retry if self.after_retry else cond.answer
        if self.independent and cond.independent is not None:
            answer = cond.independent
        if self.streams and answer.raises is None and answer.failed:
            answer = replace(answer, raises=kubemap.MapTaskError)
        if self.raises_first:
            stopped = sorted(answer.failed | answer.not_run)
            if stopped and stopped[0] in answer.failed:
                answer = replace(answer, raises=BadInput)
        return Expectation(answer, raises=self.raises)

    def applies(self, cond: Condition) -> bool:
        return cond.name not in self.skip


# map, imap and return_exceptions block or stream inside the call: nothing a user holds
# can cancel them but Ctrl-C (tested in test_local_backend); Executor and joblib cannot
# cancel a running call, and their calls are not the function the cache knows; the CLI
# has no --cache.
_NO_CANCEL = frozenset({"cancelled"})
_NO_CANCEL_NO_CACHE = frozenset({"cancelled", "partly cached"})
FEATURES = [
    Feature("map", feature_map, _NO_CANCEL),
    Feature("submit", feature_submit),
    Feature("as_completed", feature_as_completed, streams=True),
    Feature("as_completed(return_exceptions)", feature_as_completed_exc, raises=False),
    Feature("imap", feature_imap, _NO_CANCEL, streams=True),
    Feature("imap(return_exceptions)", feature_imap_exc, _NO_CANCEL, raises=False),
    # the cache of a file is its content tag: the prefill runs conform, not conform_file
    Feature("files", feature_files, _NO_CANCEL_NO_CACHE),
    Feature("return_exceptions", feature_return_exceptions, _NO_CANCEL, raises=False),
    Feature("retry", feature_retry, after_retry=True),
    Feature("Executor.submit", feature_executor_submit, _NO_CANCEL_NO_CACHE, independent=True),
    Feature(
        "Executor.map",
        feature_executor_map,
        _NO_CANCEL_NO_CACHE,
        independent=True,
        raises_first=True,
    ),
    Feature("joblib", feature_joblib, _NO_CANCEL_NO_CACHE, independent=True, raises_first=True),
    Feature("cli run", feature_cli_run, frozenset({"partly cached"})),
    Feature("cli results", feature_cli_results),
    Feature("cli retry", feature_cli_retry, after_retry=True),
]


# (feature, condition) -> why that cell disagrees today, on every backend (the SDK's own
# answers). Each is a strict xfail: once the fix lands the cell passes, strict xfail fails
# the run, and its line here goes.
KNOWN: dict[tuple[str, str], str] = {}


def cells() -> list[tuple[Feature, Condition]]:
    return [(f, c) for f in FEATURES for c in CONDITIONS if f.applies(c)]


def cell_id(feature: Feature, cond: Condition) -> str:
    return f"{feature.name}|{cond.name}"


def cell_params(known: dict[tuple[str, str], str]) -> list[Any]:
    """The cells as pytest params; a cell in `known` (feature, condition) -> why it
    disagrees today is a strict xfail: it fails the run once it passes (drop the mark)."""
    import pytest

    params = []
    for feature, cond in cells():
        why = known.get((feature.name, cond.name))
        marks = [pytest.mark.xfail(strict=True, reason=why, raises=AssertionError)] if why else []
        params.append(pytest.param(feature, cond, id=cell_id(feature, cond), marks=marks))
    return params


def check_cell(feature: Feature, cond: Condition, backend: Backend, where: Path) -> None:
    """Run one cell of the matrix and assert the condition's answer on every surface."""
    cond.prepare(where)
    surfaces = feature.run(cond, backend, where)
    expect = feature.expectation(cond)
    assert surfaces, f"{feature.name} showed nothing"
    for name, seen in surfaces.items():  # a surface that shows nothing would agree vacuously
        assert seen.observed(), f"{feature.name}: {name} showed nothing to check"
    problems = [line for name, seen in surfaces.items() for line in mismatches(name, seen, expect)]
    independent = feature.independent and cond.independent is not None
    if not feature.after_retry and not independent and not feature.raises_first:
        for index, times in cond.runs.items():
            ran = where / str(index)
            got = len(ran.read_text().splitlines()) if ran.exists() else 0
            if got != times:
                problems.append(f"index {index} ran {got} times, expected {times}")
    if feature.after_retry:  # what succeeded before never runs again
        for index in cond.answer.succeeded:
            ran = where / str(index)
            got = len(ran.read_text().splitlines()) if ran.exists() else 0
            if got != cond.runs.get(index, 1):
                problems.append(f"index {index} ran {got} times after a retry")
    if cond.sleep:  # the run was stopped: none of its calls may still be running
        beats = {path: path.stat().st_mtime_ns for path in where.glob("beat-*")}
        time.sleep(6 * BEAT)
        running = sorted(p.name for p, seen in beats.items() if p.stat().st_mtime_ns != seen)
        if running:
            problems.append(f"calls still running after the run stopped: {running}")
    assert not problems, f"{feature.name} | {cond.name}:\n  " + "\n  ".join(problems)
