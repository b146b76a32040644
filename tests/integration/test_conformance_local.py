"""The conformance matrix (tests/scenario_table.py: every feature under every condition)
on the local backend: each cell asserts its condition's one answer on every surface of
its feature. The same cells run on the test cluster in tests/e2e/test_scenarios_cluster.py.

A cell marked xfail (strict) disagrees with the answer today for the reason it names;
when the fix lands the cell passes, strict xfail turns that into a failure, and the mark
goes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scenario_table import KNOWN, Condition, Feature, cell_params, check_cell, local_backend

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("feature", "cond"), cell_params(KNOWN))
def test_conformance_cell(feature: Feature, cond: Condition, tmp_path: Path) -> None:
    check_cell(feature, cond, local_backend(tmp_path / "store"), tmp_path / "calls")
