"""The Secrets that hold signing keys (kubemap.task.signing), made and read by the SDK only.

A task's key lives in `<task>-key`, created before its MapTask (so no pod can start without
it) and then given the MapTask as owner (so it goes with the task). A pool's key lives in
`kubemap-pool-<pool>-key`, created at the pool's first signed submit and owned by the
WorkerPool. The operator never reads either: it only names them in the pods it builds.
"""

from __future__ import annotations

import base64
import contextlib
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubemap.backends.kubernetes.client import Cluster, message_of
from kubemap.contract import KIND, LABEL_TASK, task_label
from kubemap.errors import ClusterError, ConfigError
from kubemap.resources.workerpool import LABEL_POOL, POOL_KIND, pool_resource_name
from kubemap.task.signing import (
    KEY_FIELD,
    Signer,
    key_secret,
    new_key,
    owner_ref,
    pool_secret_name,
    secret_name,
)

_RIGHTS = "the SDK needs to create, read and patch Secrets in the task's namespace"


def create_task_key(cluster: Cluster, signer: Signer) -> None:
    """The task's key Secret, before the MapTask exists (no owner yet)."""
    name = secret_name(signer.task)
    body = key_secret(name, signer.key, {LABEL_TASK: task_label(signer.task)})
    try:
        cluster.call(
            f"create Secret {name}", cluster.core.create_namespaced_secret, cluster.namespace, body
        )
    except ApiException as exc:
        if exc.status == 409:
            raise ConfigError(
                f"a Secret {name!r} already exists in namespace {cluster.namespace}: a task "
                f"named {signer.task!r} exists, or its key was left behind; pick another name, "
                f"or delete it with `kubectl delete secret {name} -n {cluster.namespace}`"
            ) from None
        raise ClusterError(
            f"creating the key Secret {name} was refused: {message_of(exc)}; {_RIGHTS}"
        ) from None


def adopt_task_key(cluster: Cluster, task: str, uid: str) -> None:
    """Make the MapTask own its key Secret, so the garbage collector deletes it with it."""
    _set_owner(cluster, secret_name(task), owner_ref(KIND, task, uid))


def delete_task_key(cluster: Cluster, task: str) -> None:
    """The key of a task whose MapTask could not be created."""
    with contextlib.suppress(ApiException, ClusterError):  # best effort: it has a task label
        cluster.call(
            "delete Secret",
            cluster.core.delete_namespaced_secret,
            secret_name(task),
            cluster.namespace,
        )


def pool_key(cluster: Cluster, pool: str) -> Signer:
    """The pool's key (task name filled in by for_task): read its Secret, or create it."""
    name = pool_secret_name(pool_resource_name(pool))
    for _ in range(3):
        key = read_key(cluster, name)
        if key is not None:
            return Signer("", key)
        key = new_key()
        try:
            cluster.call(
                f"create Secret {name}",
                cluster.core.create_namespaced_secret,
                cluster.namespace,
                key_secret(name, key, {LABEL_POOL: pool}),
            )
        except ApiException as exc:
            if exc.status == 409:
                continue  # another submit made it meanwhile: read that one
            raise ClusterError(
                f"creating the pool key Secret {name} was refused: {message_of(exc)}; {_RIGHTS}"
            ) from None
        return Signer("", key)
    raise ClusterError(f"the pool key Secret {name} keeps changing: retry the submit")


def adopt_pool_key(cluster: Cluster, pool: str, uid: str) -> None:
    _set_owner(cluster, pool_secret_name(pool_resource_name(pool)), owner_ref(POOL_KIND, pool, uid))


def read_key(cluster: Cluster, name: str) -> bytes | None:
    """The key in Secret `name`; None if there is no such Secret."""
    try:
        body: Any = cluster.call(
            f"read Secret {name}", cluster.core.read_namespaced_secret, name, cluster.namespace
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise ClusterError(
            f"reading the key Secret {name} was refused: {message_of(exc)}; {_RIGHTS}"
        ) from None
    text = (body.data or {}).get(KEY_FIELD)
    if not text:
        raise ConfigError(f"Secret {name} has no {KEY_FIELD!r}: delete it and submit again")
    return bytes.fromhex(base64.b64decode(text).decode())


def task_signer(cluster: Cluster, task: str, pool: str | None) -> Signer | None:
    """The signer of an existing task (for attach): its own key, or its pool's."""
    secret = pool_secret_name(pool_resource_name(pool)) if pool else secret_name(task)
    key = read_key(cluster, secret)
    return Signer(task, key) if key is not None else None


def _set_owner(cluster: Cluster, name: str, owner: dict[str, Any]) -> None:
    patch = {"metadata": {"ownerReferences": [owner]}}
    try:
        cluster.call(
            f"adopt Secret {name}",
            cluster.core.patch_namespaced_secret,
            name,
            cluster.namespace,
            patch,
        )
    except ApiException as exc:
        raise ClusterError(
            f"giving the key Secret {name} its owner was refused: {message_of(exc)}; {_RIGHTS}"
        ) from None
