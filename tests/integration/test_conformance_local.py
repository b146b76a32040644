"""The conformance matrix (tests/scenario_table.py: every feature under every condition)
on the local backend: each cell asserts its condition's one answer on every surface of
its feature. The same cells run on the test cluster in tests/e2e/test_scenarios_cluster.py.

A cell marked xfail (strict) disagrees with the answer today for the reason it names;
when the fix lands the cell passes, strict xfail turns that into a failure, and the mark
goes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import kubemap
import pytest
from scenario_table import (
    CONDITIONS,
    FEATURES,
    KNOWN,
    Answer,
    Condition,
    Expectation,
    Feature,
    Seen,
    cell_params,
    check_cell,
    local_backend,
    mismatches,
)

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("feature", "cond"), cell_params(KNOWN))
def test_conformance_cell(feature: Feature, cond: Condition, tmp_path: Path) -> None:
    check_cell(feature, cond, local_backend(tmp_path / "store"), tmp_path / "calls")


def test_a_wrong_answer_fails_its_cell(tmp_path: Path) -> None:
    """The matrix can fail: fail-fast held to an answer that says index 3 ran fails on every
    surface of submit() that shows it (results, failures, not_run, status, the error)."""
    cond = next(c for c in CONDITIONS if c.name == "fail-fast")
    feature = next(f for f in FEATURES if f.name == "submit")
    wrong = replace(cond, answer=replace(cond.answer, succeeded=frozenset({0, 1, 3})))
    with pytest.raises(AssertionError) as failed:
        check_cell(feature, wrong, local_backend(tmp_path / "store"), tmp_path / "calls")
    said = str(failed.value)
    for surface in ("status()", "not_run()", "results(partial=True)", "results()"):
        assert f"{surface}: " in said, said


def test_mismatches_name_each_disagreement() -> None:
    answer = Answer(frozenset({0, 1}), frozenset({2}), kubemap.MapTaskError, 1, total=4)
    seen = Seen(
        values={0: 0, 1: 7},
        failed=set(),
        not_run={2, 3},
        counts=(2, 0, 2),
        raised=None,
        exit_code=0,
        errors={2: "not an exception"},
    )
    found = mismatches("x", seen, Expectation(answer))
    assert any("wrong values {1: 7}" in line for line in found), found
    assert any("failed indices" in line for line in found), found
    assert any("not-run indices" in line for line in found), found
    assert any("counts" in line for line in found), found
    assert any("expected MapTaskError, raised nothing" in line for line in found), found
    assert any("exit code" in line for line in found), found
    assert any("index 2's error is not an exception" in line for line in found), found
    assert len(found) == 7, found
    assert mismatches("x", Seen(values={0: 0, 1: 1}), Expectation(answer)) == []
