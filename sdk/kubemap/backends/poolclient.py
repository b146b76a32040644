"""Pool calls the Kubernetes backend needs before a pool task starts (and the WorkerPool API
builds on): read and list WorkerPools, check their Python, create one with defaults."""

from __future__ import annotations

from typing import Any

from kubernetes.client.exceptions import ApiException

from kubemap.backends.kubeclient import Cluster
from kubemap.backends.kubeclient import message_of as _message
from kubemap.contract import API_VERSION, GROUP, VERSION
from kubemap.errors import ClusterError, ConfigError
from kubemap.poolmodels import (
    POOL_KIND,
    POOL_PLURAL,
    WorkerPoolSpec,
    WorkerPoolStatus,
    python_minor,
)

DEFAULT_REPLICAS = 4


def get_pool(cluster: Cluster, name: str) -> dict[str, Any] | None:
    try:
        body = cluster.call(
            f"read WorkerPool {name}",
            cluster.custom.get_namespaced_custom_object,
            GROUP, VERSION, cluster.namespace, POOL_PLURAL, name,
        )  # fmt: skip
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise ClusterError(f"reading WorkerPool {name} failed: {_message(exc)}") from None
    return dict(body)


def list_pools(cluster: Cluster) -> list[dict[str, Any]]:
    try:
        body = cluster.call(
            "list WorkerPools",
            cluster.custom.list_namespaced_custom_object,
            GROUP, VERSION, cluster.namespace, POOL_PLURAL,
        )  # fmt: skip
    except ApiException as exc:
        raise ClusterError(f"listing WorkerPools failed: {_message(exc)}") from None
    return list(body.get("items") or [])


def check_pool_python(cluster: Cluster, name: str) -> None:
    """Refuse, before anything is uploaded, a pool whose workers run another Python minor."""
    body = get_pool(cluster, name)
    if body is None:
        return  # created at start; its workers check every lease against the task
    advertised = WorkerPoolStatus.model_validate(body.get("status") or {}).python_version
    mine = python_minor()
    if advertised and mine not in advertised.split(","):
        raise ConfigError(
            f"WorkerPool {name!r} runs Python {advertised}, but this process is Python {mine}: "
            f"a function pickled by Python {mine} cannot load there. Submit from Python "
            f"{advertised}, or use a pool whose image runs Python {mine}"
        )


def ensure_pool(cluster: Cluster, name: str, *, replicas: int | None = None) -> None:
    """Create the pool with default settings unless it exists."""
    if get_pool(cluster, name) is not None:
        return
    size = min(replicas or DEFAULT_REPLICAS, 100)
    body = {
        "apiVersion": API_VERSION,
        "kind": POOL_KIND,
        "metadata": {"name": name},
        "spec": WorkerPoolSpec(replicas=size, max_replicas=max(100, size)).to_wire(),
    }
    try:
        cluster.call(
            f"create WorkerPool {name}",
            cluster.custom.create_namespaced_custom_object,
            GROUP, VERSION, cluster.namespace, POOL_PLURAL, body,
        )  # fmt: skip
    except ApiException as exc:
        if exc.status != 409:  # made meanwhile by another submit: fine
            raise ClusterError(f"creating WorkerPool {name} was refused: {_message(exc)}") from None
