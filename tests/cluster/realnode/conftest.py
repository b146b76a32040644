"""Fixtures for the tests that need the real node (``testcluster up --real-node``).

Skipped unless KUBECONFIG points at a cluster whose node ``kubemap-real-0`` is Ready; with
KUBEMAP_REAL_NODE_REQUIRED=1 (``scripts/test --real-node``) a missing node fails instead.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/cluster: clusterlib

from clusterlib.realnode_config import REAL_NODE_NAME


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("KUBEMAP_REAL_NODE_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_api() -> client.ApiClient:
    if not os.environ.get("KUBECONFIG"):
        _skip_or_fail('KUBECONFIG is not set: eval "$(tests/cluster/testcluster env)" first')
    config.load_kube_config()
    api = client.ApiClient()
    try:
        node = client.CoreV1Api(api).read_node(REAL_NODE_NAME, _request_timeout=5)
    except ApiException as exc:
        _skip_or_fail(f"no real node {REAL_NODE_NAME} ({exc.status}): testcluster up --real-node")
    except Exception as exc:
        _skip_or_fail(f"the API server is not reachable: {exc}")
    ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    if not ready:
        _skip_or_fail(f"the real node {REAL_NODE_NAME} is not Ready")
    return api


@pytest.fixture(scope="session")
def core(real_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(real_api)


@pytest.fixture(scope="session")
def custom(real_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(real_api)


@pytest.fixture
def unique() -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{secrets.token_hex(3)}"
