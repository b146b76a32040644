"""What the SDK's errors say, read as a user reads them (issue 18, item 21)."""

from __future__ import annotations

from pathlib import Path

import kubemap
import pytest

pytestmark = pytest.mark.timeout(60)


def always_fails(x: int) -> int:
    raise ValueError(f"no {x}")


def fails_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("no 2")
    return x


def test_a_run_with_no_result_says_nothing_of_results_that_stay(tmp_path: Path) -> None:
    with pytest.raises(kubemap.MapTaskError) as info:
        kubemap.map(always_fails, [1, 2, 3], store=str(tmp_path), parallelism=1)
    said = str(info.value)
    assert info.value.succeeded == 0
    assert "Results of the 0" not in said and "results(partial=True)" not in said
    assert ".retry()" in said  # what can be done: rerun what is missing


def test_a_run_with_some_results_says_where_they_are(tmp_path: Path) -> None:
    with pytest.raises(kubemap.MapTaskError) as info:
        kubemap.map(fails_on_two, range(5), store=str(tmp_path), parallelism=1, items_per_pod=5)
    said = str(info.value)
    assert f"Results of the {info.value.succeeded} that succeeded stay in" in said
    assert info.value.succeeded >= 1 and "results(partial=True)" in said
