"""Pool calls the Kubernetes backend needs before a pool task starts (and the WorkerPool API
builds on): read and list WorkerPools, check their Python, create one with defaults."""

from __future__ import annotations

import sys
import warnings
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubemap.backends.kubernetes.client import Cluster
from kubemap.backends.kubernetes.client import message_of as _message
from kubemap.contract import API_VERSION, GROUP, VERSION
from kubemap.errors import ClusterError, ConfigError
from kubemap.resources.workerpool import (
    POOL_KIND,
    POOL_PLURAL,
    WorkerPoolSpec,
    WorkerPoolStatus,
    python_minor,
)

DEFAULT_REPLICAS = 4


class PoolCreatedWarning(UserWarning):
    """A run named a WorkerPool that did not exist, so kubemap created one: a mistyped name
    would otherwise start workers unseen (filter this category to silence it)."""


def _warn_created(message: str) -> None:
    """Warn at the user's call (the first frame outside kubemap); from the CLI (click called
    kubemap) as plain `kubemap:0: PoolCreatedWarning: ...`, without a line of click's."""
    level, frame = 1, sys._getframe(0)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("kubemap"):
        level, frame = level + 1, frame.f_back  # type: ignore[assignment]
    caller = str(frame.f_globals.get("__name__", "")) if frame is not None else ""
    if frame is None or caller.split(".")[0] == "click":
        warnings.warn_explicit(PoolCreatedWarning(message), PoolCreatedWarning, "kubemap", 0)
    else:
        warnings.warn(PoolCreatedWarning(message), stacklevel=level)


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


def ensure_pool(cluster: Cluster, name: str, *, replicas: int | None = None) -> bool:
    """Create the pool with default settings unless it exists; True if this call made it.

    Making one is said out loud (PoolCreatedWarning, naming its size and how to delete it):
    a mistyped pool name would otherwise start a second pool of workers nobody knows of."""
    if get_pool(cluster, name) is not None:
        return False
    size = min(replicas or DEFAULT_REPLICAS, 100)
    spec = WorkerPoolSpec(replicas=size, max_replicas=max(100, size))
    body = {
        "apiVersion": API_VERSION,
        "kind": POOL_KIND,
        "metadata": {"name": name},
        "spec": spec.to_wire(),
    }
    try:
        cluster.call(
            f"create WorkerPool {name}",
            cluster.custom.create_namespaced_custom_object,
            GROUP, VERSION, cluster.namespace, POOL_PLURAL, body,
        )  # fmt: skip
    except ApiException as exc:
        if exc.status == 409:  # made meanwhile by another submit: fine, and not ours to announce
            return False
        raise ClusterError(f"creating WorkerPool {name} was refused: {_message(exc)}") from None
    ns = cluster.namespace
    _warn_created(
        f"no WorkerPool {name!r} existed in namespace {ns}, so kubemap created it with "
        f"{size} worker{'' if size == 1 else 's'} (they stop after {spec.idle_ttl_seconds} s "
        f"idle); if the name is a typo, delete it with `kubemap pool delete {name} -n {ns}` "
        f"(`kubemap pool list -n {ns}` shows the pools)"
    )
    return True
