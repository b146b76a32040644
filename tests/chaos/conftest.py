"""Fault-injection fixtures: the test cluster from tests/cluster, with kubemap installed.

    tests/cluster/testcluster up && eval "$(tests/cluster/testcluster env)"
    .venv/bin/pytest -m chaos tests/chaos

Skipped unless a test cluster started by `testcluster up` runs (its state dir is found the way
`testcluster` finds it): the faults stop and start its processes, which no other cluster has.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import chaoskit
import pytest
from faults import LiveCluster, running_operator, wait_until
from kubernetes import client, config


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures each fault test reported (faults survived, retries, executions)."""
    if chaoskit.REPORTED:
        terminalreporter.section("chaos figures")
        for line in chaoskit.REPORTED:
            terminalreporter.write_line(f"CHAOS {line}")


@pytest.fixture(scope="session")
def cluster() -> LiveCluster:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip('KUBECONFIG is not set: eval "$(tests/cluster/testcluster env)" first')
    try:
        found = LiveCluster()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    if os.path.realpath(found.state.kubeconfig) != os.path.realpath(os.environ["KUBECONFIG"]):
        pytest.skip("KUBECONFIG is not the test cluster's: these faults need its processes")
    return found


@pytest.fixture(scope="session")
def api(cluster: LiveCluster) -> client.ApiClient:
    config.load_kube_config()
    return client.ApiClient()


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture(autouse=True)
def operator_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each scenario starts and ends with a running operator (a scenario may kill it)."""
    if "core" not in request.fixturenames:
        yield
        return
    core: client.CoreV1Api = request.getfixturevalue("core")
    wait_until("the operator runs", lambda: running_operator(core) is not None, 120)
    yield
    wait_until("the operator runs again", lambda: running_operator(core) is not None, 120)


@pytest.fixture
def unique() -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{secrets.token_hex(3)}"
