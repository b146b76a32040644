"""`kubemap.WorkerPool`: create, scale and delete warm worker pools from Python.

    pool = kubemap.WorkerPool("scorers", replicas=8, idle_ttl_seconds=600)
    pool.create()                   # or kubemap.map(fn, xs, backend="kubernetes", pool="scorers")
    pool.scale(16); pool.status(); pool.delete()
    kubemap.WorkerPool("frames", packages=["pandas==2.2.*"])   # pip-installed once per worker
A MapTask names its pool in spec.pool; `kubemap.map(..., pool=name)` creates the pool with
these defaults when it does not exist yet, and says so (PoolCreatedWarning: a mistyped name
must not start workers unseen). delete() of a pool that does not exist is a ConfigError.
"""

from __future__ import annotations

from typing import Any

from kubernetes.client.exceptions import ApiException

from kubemap.backends.kubernetes import keys
from kubemap.backends.kubernetes.client import Cluster
from kubemap.backends.kubernetes.client import message_of as _message
from kubemap.backends.kubernetes.workerpools import DEFAULT_REPLICAS, get_pool
from kubemap.contract import API_VERSION, GROUP, VERSION
from kubemap.errors import ClusterError, ConfigError
from kubemap.resources.workerpool import (
    POOL_KIND,
    POOL_PLURAL,
    WorkerPoolSpec,
    WorkerPoolStatus,
)


class WorkerPool:
    """A WorkerPool resource in a namespace of the current cluster."""

    def __init__(
        self,
        name: str,
        *,
        namespace: str | None = None,
        replicas: int = DEFAULT_REPLICAS,
        min_replicas: int = 0,
        max_replicas: int | None = None,
        idle_ttl_seconds: int = 300,
        image: str | None = None,
        env: dict[str, str] | None = None,
        resources: dict[str, Any] | None = None,
        node_selector: dict[str, str] | None = None,
        service_account: str | None = None,
        packages: list[str] | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self.name = name
        # WorkerPools exist only on a cluster: no local backend to suggest instead.
        self.cluster = cluster or Cluster.connect(namespace, alternative=None)
        try:
            self.spec = WorkerPoolSpec(
                replicas=replicas,
                min_replicas=min_replicas,
                max_replicas=max(max_replicas or 100, replicas),
                idle_ttl_seconds=idle_ttl_seconds,
                image=image,
                env=[{"name": k, "value": v} for k, v in (env or {}).items()] or None,
                resources=resources,
                node_selector=node_selector,
                service_account_name=service_account,
                packages=list(packages) if packages else None,
            )
        except ValueError as exc:
            raise ConfigError(f"WorkerPool {name}: {exc}") from None

    def _custom(self) -> Any:
        return self.cluster.custom

    def get(self) -> dict[str, Any] | None:
        return get_pool(self.cluster, self.name)

    def create(self, *, exist_ok: bool = False) -> WorkerPool:
        body = {
            "apiVersion": API_VERSION,
            "kind": POOL_KIND,
            "metadata": {"name": self.name},
            "spec": self.spec.to_wire(),
        }
        # The pool's signing key first, so its workers start with it (kubemap.task.signing).
        keys.pool_key(self.cluster, self.name)
        try:
            created = self.cluster.call(
                f"create WorkerPool {self.name}",
                self._custom().create_namespaced_custom_object,
                GROUP, VERSION, self.cluster.namespace, POOL_PLURAL, body,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 409 and exist_ok:
                return self
            if exc.status == 409:
                raise ConfigError(
                    f"a WorkerPool named {self.name!r} already exists in {self.cluster.namespace}"
                ) from None
            raise ClusterError(
                f"creating WorkerPool {self.name} was refused: {_message(exc)}"
            ) from None
        keys.adopt_pool_key(self.cluster, self.name, str(created["metadata"]["uid"]))
        return self

    def scale(self, replicas: int) -> None:
        patch: dict[str, Any] = {"replicas": replicas}
        if replicas > self.spec.max_replicas:
            patch["maxReplicas"] = replicas
        body = self.get()
        if body is None:
            raise ConfigError(f"no WorkerPool {self.name!r} in {self.cluster.namespace}")
        if replicas < int((body.get("spec") or {}).get("minReplicas") or 0):
            patch["minReplicas"] = replicas
        self._patch({"spec": patch})

    def _patch(self, patch: dict[str, Any]) -> None:
        try:
            self.cluster.call(
                f"update WorkerPool {self.name}",
                self._custom().patch_namespaced_custom_object,
                GROUP, VERSION, self.cluster.namespace, POOL_PLURAL, self.name, patch,
                _content_type="application/merge-patch+json",
            )  # fmt: skip
        except ApiException as exc:
            raise ClusterError(f"updating WorkerPool {self.name} failed: {_message(exc)}") from None

    def status(self) -> WorkerPoolStatus:
        body = self.get()
        if body is None:
            raise ConfigError(f"no WorkerPool {self.name!r} in {self.cluster.namespace}")
        return WorkerPoolStatus.model_validate(body.get("status") or {})

    def delete(self, *, missing_ok: bool = False) -> None:
        """Delete the pool (its workers stop). A pool that does not exist is a ConfigError
        (a mistyped name must not read as done) unless missing_ok."""
        try:
            self.cluster.call(
                f"delete WorkerPool {self.name}",
                self._custom().delete_namespaced_custom_object,
                GROUP, VERSION, self.cluster.namespace, POOL_PLURAL, self.name,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return
            ns = self.cluster.namespace
            if exc.status == 404:
                raise ConfigError(
                    f"no WorkerPool {self.name!r} in namespace {ns}: nothing deleted; "
                    f"`kubemap pool list -n {ns}` shows the pools there"
                ) from None
            raise ClusterError(f"deleting WorkerPool {self.name} failed: {_message(exc)}") from None
