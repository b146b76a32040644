"""The run engine's scenario table on the test cluster: the same answers as the local
backend gives in tests/integration/test_scenarios_local.py (one plan, one policy); and the
conformance matrix, each feature under each condition, in pod mode and on a warm pool."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubemap
import pytest
from e2ekit import NAMESPACE
from kubemap.core.status import Phase, Reason
from scenario_table import (
    KNOWN,
    SCENARIOS,
    Backend,
    Condition,
    Feature,
    Scenario,
    cell_params,
    check,
    check_cell,
    work,
)

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
        # SDK batches (kubemap.core.slicing) and a pod runs past the failing index.
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


# -- the conformance matrix (tests/scenario_table.py): every feature under every condition,
# the answers the local backend gives (tests/integration/test_conformance_local.py), in pod
# mode and on a warm WorkerPool.
# (feature, condition) -> why that cell disagrees today on the cluster, beyond the SDK's own
# (scenario_table.KNOWN, which hold on every backend)
CLUSTER_KNOWN: dict[tuple[str, str], str] = {**KNOWN}

# The whole matrix is 92 cells a mode, about 12 s each on the test cluster (37 min for both
# modes, measured): more than CI's budget. By default the cluster runs the features whose
# answers come from the backend itself (the task's status, its stored results and errors,
# streaming from the store, the CLI's commands on a MapTask, a retry through the operator)
# under every condition; map, imap, files, return_exceptions, Executor and joblib are the
# SDK's own layers over the same MapRun, checked on every condition locally.
# KUBEMAP_E2E_MATRIX=full runs every cell here too.
CLUSTER_FEATURES = {"submit", "as_completed(return_exceptions)", "cli retry"}


def cluster_cells() -> list[Any]:
    params = cell_params(CLUSTER_KNOWN)
    if os.environ.get("KUBEMAP_E2E_MATRIX") == "full":
        return params
    return [p for p in params if p.values[0].name in CLUSTER_FEATURES]


def cluster_backend(unique: Callable[[str], str], store: str | None, **extra: Any) -> Backend:
    def options() -> dict[str, Any]:
        return {
            "backend": "kubernetes",
            "namespace": NAMESPACE,
            "store": store,
            "name": unique("cf"),
            **extra,
        }

    where = ("--backend", "kubernetes", "--namespace", NAMESPACE)
    run_args = where + (("--store", store) if store else ())
    run_args += tuple(a for key, value in extra.items() for a in (f"--{key}", str(value)))
    # pods start in seconds, not milliseconds: 0 and 1 finish well within this
    return Backend("kubernetes", options, run_args, where, deadline=60.0, retry_takes_options=False)


@pytest.mark.parametrize(("feature", "cond"), cluster_cells())
def test_conformance_cell_pod_mode(
    feature: Feature, cond: Condition, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    tmp_path.chmod(0o777)  # the pods' processes count their calls and read markers here
    backend = cluster_backend(unique, os.environ.get("KUBEMAP_STORE"))
    check_cell(feature, cond, backend, tmp_path / "calls")


@pytest.fixture(scope="module")
def warm_pool(kubemap_installed: None, operator: Any) -> Iterator[str]:
    """One warm WorkerPool for every cell, as a user keeps one: a cell that cancels or
    times out must leave it able to serve the next."""
    from kubemap.api.workerpool import WorkerPool

    made = WorkerPool(
        f"cf-pool-{secrets.token_hex(3)}", namespace=NAMESPACE, replicas=2, idle_ttl_seconds=0
    ).create()
    yield made.name
    made.delete()


@pytest.mark.parametrize(("feature", "cond"), cluster_cells())
def test_conformance_cell_warm_pool(
    feature: Feature,
    cond: Condition,
    tmp_path: Path,
    unique: Callable[[str], str],
    warm_pool: str,
) -> None:
    tmp_path.chmod(0o777)
    backend = cluster_backend(unique, os.environ.get("KUBEMAP_STORE"), pool=warm_pool)
    check_cell(feature, cond, backend, tmp_path / "calls")
