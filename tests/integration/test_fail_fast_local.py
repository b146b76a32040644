"""Fail-fast inside a slice, through the real local backend (worker processes, file:// store).

kubemap's default (min_success_ratio=1.0, no retries) stops at the first failure: a slice
holding several items (items_per_pod, auto-batching) must not run the items after the
decisive failure. Each call of the function appends to calls-<x>, so the counts are real.
"""

from __future__ import annotations

import functools
from pathlib import Path

import kubemap
import pytest
from kubemap.resources.maptask import Phase

pytestmark = pytest.mark.timeout(60)


def fail_at_two(marker_dir: str, x: int) -> int:
    with open(Path(marker_dir) / f"calls-{x}", "a") as out:
        out.write("x")
    if x == 2:
        raise ValueError(f"bad input {x}")
    return x * 10


def calls(marker_dir: Path, n: int) -> dict[int, int]:
    def count(x: int) -> int:
        path = marker_dir / f"calls-{x}"
        return len(path.read_text()) if path.exists() else 0

    return {x: count(x) for x in range(n)}


@pytest.fixture
def store(tmp_path: Path) -> str:
    return (tmp_path / "store").as_uri()


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "calls"
    path.mkdir()
    return path


def test_a_decisive_failure_stops_the_rest_of_its_slice(store: str, marks: Path) -> None:
    fn = functools.partial(fail_at_two, str(marks))
    run = kubemap.submit(fn, range(6), store=store, items_per_pod=6, parallelism=1)
    status = run.wait()
    assert status.phase is Phase.FAILED
    assert calls(marks, 6) == {0: 1, 1: 1, 2: 1, 3: 0, 4: 0, 5: 0}  # 3..5 never called
    assert (status.succeeded, status.failed, status.not_run) == (2, 1, 3)
    assert set(run.failures()) == {2} and list(run.not_run()) == [3, 4, 5]
    assert run.results(partial=True) == [0, 10, None, None, None, None]  # 0, 1 kept

    with pytest.raises(kubemap.MapTaskError) as info:
        kubemap.map(fn, range(6), store=store, items_per_pod=6, parallelism=1)
    error = info.value
    assert set(error.failures) == {2} and list(error.not_run) == [3, 4, 5]
    assert error.succeeded == 2
    assert calls(marks, 6) == {0: 2, 1: 2, 2: 2, 3: 0, 4: 0, 5: 0}


def test_a_failure_with_a_retry_left_does_not_stop_its_slice(store: str, marks: Path) -> None:
    """retries=1: index 2's first failure is not decisive, so 3..5 run; its retry (a slice
    of its own) fails again and is final: the rest had already succeeded."""
    fn = functools.partial(fail_at_two, str(marks))
    run = kubemap.submit(fn, range(6), store=store, items_per_pod=6, parallelism=1, retries=1)
    status = run.wait()
    assert status.phase is Phase.FAILED
    assert calls(marks, 6) == {0: 1, 1: 1, 2: 2, 3: 1, 4: 1, 5: 1}
    assert (status.succeeded, status.failed, status.not_run) == (5, 1, 0)
    assert set(run.failures()) == {2} and list(run.not_run()) == []


def test_a_tolerated_failure_does_not_stop_its_slice(store: str, marks: Path) -> None:
    fn = functools.partial(fail_at_two, str(marks))
    run = kubemap.submit(
        fn, range(6), store=store, items_per_pod=6, parallelism=1, min_success_ratio=0.5
    )
    status = run.wait()
    assert status.phase is Phase.SUCCEEDED
    assert calls(marks, 6) == {x: 1 for x in range(6)}
    assert (status.succeeded, status.failed, status.not_run) == (5, 1, 0)


def test_auto_batched_slices_stop_at_a_decisive_failure(store: str, marks: Path) -> None:
    """No items_per_pod: the local backend sizes slices itself; whatever it picks, nothing
    after index 2 in 2's slice runs, and what did run is counted."""
    fn = functools.partial(fail_at_two, str(marks))
    run = kubemap.submit(fn, range(6), store=store, parallelism=1)
    status = run.wait()
    assert status.phase is Phase.FAILED
    ran = {x for x, n in calls(marks, 6).items() if n}
    assert 2 in ran and all(n <= 1 for n in calls(marks, 6).values())
    assert (status.succeeded, status.failed) == (len(ran) - 1, 1)
    assert set(run.not_run()) == set(range(6)) - ran
