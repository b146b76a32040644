"""End-to-end fixtures: a real API server (KUBECONFIG) with kubemap installed.

Skipped unless KUBECONFIG is set and the MapTask CRD is present. The operator is the one the
chart installed (namespace kubemap-system); with KUBEMAP_E2E_LOCAL_OPERATOR=1 the suite runs
`python -m kubemap_operator` itself instead (started and stopped by PID).
    eval "$(tests/cluster/testcluster env)" && .venv/bin/pytest -m e2e tests/e2e
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2ekit import NAMESPACE, Operator
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException


@pytest.fixture(scope="session")
def kubemap_installed() -> None:
    """Skip unless KUBECONFIG points at an API server with the MapTask CRD."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)


_REASON: list[str | None] = []


def _unavailable() -> str | None:
    if _REASON:
        return _REASON[0]
    reason: str | None = None
    if not os.environ.get("KUBECONFIG"):
        reason = 'KUBECONFIG is not set: eval "$(tests/cluster/testcluster env)" first'
    else:
        try:
            config.load_kube_config()
            client.ApiextensionsV1Api().read_custom_resource_definition(
                "maptasks.kubemap.io", _request_timeout=5
            )
        except ApiException as exc:
            reason = f"the MapTask CRD is not installed ({exc.status})"
        except Exception as exc:  # unreachable server, bad kubeconfig
            reason = f"the API server is not reachable: {exc}"
    _REASON.append(reason)
    return reason


@pytest.fixture(scope="session")
def api(kubemap_installed: None) -> client.ApiClient:
    config.load_kube_config()
    return client.ApiClient()


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture(scope="session")
def operator(
    core: client.CoreV1Api, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    local = os.environ.get("KUBEMAP_E2E_LOCAL_OPERATOR") == "1"
    op = Operator(core, local, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def pool(unique: Callable[[str], str]) -> Iterator[Callable[..., Any]]:
    """pool(**WorkerPool options) makes a WorkerPool in the test namespace, deleted after."""
    from kubemap.api.workerpool import WorkerPool

    made: list[WorkerPool] = []

    def make(**kw: Any) -> WorkerPool:
        wp = WorkerPool(unique("pool"), namespace=NAMESPACE, **kw).create()
        made.append(wp)
        return wp

    yield make
    for wp in made:
        wp.delete()
