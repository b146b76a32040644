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


def refuse_other_python(pool: dict[str, Any] | None, name: str) -> None:
    """Refuse, before anything is uploaded, a pool (its body, None: not made yet) whose
    workers run another Python minor."""
    if pool is None:
        return  # created at start; its workers check every lease against the task
    advertised = WorkerPoolStatus.model_validate(pool.get("status") or {}).python_version
    mine = python_minor()
    if advertised and mine not in advertised.split(","):
        raise ConfigError(
            f"WorkerPool {name!r} runs Python {advertised}, but this process is Python {mine}: "
            f"a function pickled by Python {mine} cannot load there. Submit from Python "
            f"{advertised}, or use a pool whose image runs Python {mine}"
        )


def new_pool_replicas(parallelism: int | None) -> int:
    """The size of a pool made for a task that named a missing one: as many workers as
    the task may use at once (its parallelism, at most 100), else DEFAULT_REPLICAS."""
    return min(parallelism or DEFAULT_REPLICAS, 100)


def create_default_pool(cluster: Cluster, name: str, *, replicas: int) -> dict[str, Any]:
    """Create the pool a task named and nobody made, with default settings; its body.

    Making one is said out loud (PoolCreatedWarning, naming its size and how to delete it):
    a mistyped pool name would otherwise start a second pool of workers nobody knows of."""
    spec = WorkerPoolSpec(replicas=replicas, max_replicas=max(100, replicas))
    body = {
        "apiVersion": API_VERSION,
        "kind": POOL_KIND,
        "metadata": {"name": name},
        "spec": spec.to_wire(),
    }
    try:
        created = cluster.call(
            f"create WorkerPool {name}",
            cluster.custom.create_namespaced_custom_object,
            GROUP, VERSION, cluster.namespace, POOL_PLURAL, body,
        )  # fmt: skip
    except ApiException as exc:
        if exc.status == 409:  # made meanwhile by another submit: fine, and not ours to announce
            return get_pool(cluster, name) or {}
        raise ClusterError(f"creating WorkerPool {name} was refused: {_message(exc)}") from None
    ns = cluster.namespace
    _warn_created(
        f"no WorkerPool {name!r} existed in namespace {ns}, so kubemap created it with "
        f"{replicas} worker{'' if replicas == 1 else 's'} (they stop after "
        f"{spec.idle_ttl_seconds} s idle); if the name is a typo, delete it with "
        f"`kubemap pool delete {name} -n {ns}` (`kubemap pool list -n {ns}` shows the pools)"
    )
    return dict(created)
