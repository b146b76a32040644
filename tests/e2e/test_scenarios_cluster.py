"""The run engine's scenario table on the test cluster: the same answers as the local
backend gives in tests/integration/test_scenarios_local.py (one plan, one policy)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubemap
import pytest
from e2ekit import NAMESPACE
from kubemap.core.status import Phase, Reason
from scenario_table import SCENARIOS, Scenario, check, work

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed", "operator"),
]


def cluster_options(unique: Callable[[str], str]) -> dict[str, Any]:
    return {
        "backend": "kubernetes",
        "namespace": NAMESPACE,
        "store": os.environ.get("KUBEMAP_STORE"),
        "name": unique("scn"),
        # The table counts calls per index as one pod per index runs them; without this the
        # SDK batches (kubemap.core.batching) and a pod runs past the failing index.
        "items_per_pod": 1,
    }


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_on_the_cluster(
    scenario: Scenario, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    tmp_path.chmod(0o777)  # the pods' processes write their call counts here
    run = check(scenario, cluster_options(unique), tmp_path / "calls")
    assert run.done() and not run.cancel()


def test_cancel_on_the_cluster(tmp_path: Path, unique: Callable[[str], str]) -> None:
    items = [(str(tmp_path), x) for x in ["sleep0.2"] * 2 + ["sleep60"] * 4]
    run = kubemap.submit(work, items, parallelism=2, **cluster_options(unique))
    deadline = time.monotonic() + 120
    while run.status().succeeded < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run.cancel() is True
    status = run.wait(timeout=120)
    assert (status.phase, status.reason) == (Phase.CANCELLED, Reason.CANCELLED)
    assert run.cancel() is False
    with pytest.raises(kubemap.CancelledError, match="cancelled"):
        run.results()
