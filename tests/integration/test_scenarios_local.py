"""The run engine's scenario table on the local backend (the same table runs on the test
cluster in tests/e2e/test_scenarios_cluster.py, with the same answers)."""

from __future__ import annotations

import time
from pathlib import Path

import kubemap
import pytest
from kubemap.core.status import Phase, Reason
from scenario_table import SCENARIOS, Scenario, check, work


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_on_the_local_backend(scenario: Scenario, tmp_path: Path) -> None:
    run = check(scenario, {"store": str(tmp_path / "store")}, tmp_path / "calls")
    assert run.done() and not run.cancel()  # a finished run: cancel changes nothing


def test_cancel_on_the_local_backend(tmp_path: Path) -> None:
    items = [(str(tmp_path), x) for x in ["sleep0.2"] * 2 + ["sleep30"] * 4]
    run = kubemap.submit(work, items, store=str(tmp_path / "store"), parallelism=2)
    while run.status().succeeded < 1:
        time.sleep(0.05)
    assert run.cancel() is True
    status = run.wait(timeout=30)
    assert (status.phase, status.reason) == (Phase.CANCELLED, Reason.CANCELLED)
    assert run.cancel() is False
    with pytest.raises(kubemap.CancelledError, match="cancelled"):
        run.results()
    attached = kubemap.MapRun.attach(run.name, store=str(tmp_path / "store"))
    assert attached.status().phase is Phase.CANCELLED
