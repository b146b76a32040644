"""`kubemap.WorkerPool`: create, scale and delete warm worker pools from Python.

    pool = kubemap.WorkerPool("scorers", replicas=8, idle_ttl_seconds=600)
    pool.create()                   # or kubemap.map(fn, xs, backend="kubernetes", pool="scorers")
    pool.scale(16); pool.status(); pool.delete()
    kubemap.WorkerPool("frames", packages=["pandas==2.2.*"])   # pip-installed once per worker
    kubemap.WorkerPool("shared", replicas=6, queue="team-a",   # admitted by a Kueue LocalQueue
                       resources={"requests": {"cpu": "500m"}})
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
from kubemap.backends.kubernetes.queues import require_queue
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
    """A WorkerPool resource in a namespace of the current cluster: warm workers that run
    every MapTask submitted with `pool=<name>` without starting a pod.

    Making the object connects to the cluster; create() makes the resource.

    Args:
        name: The pool's name (DNS-1123, at most 40 characters).
        namespace: Its namespace; default the kubeconfig context's.
        replicas: Workers while there is work.
        min_replicas: Workers kept after `idle_ttl_seconds` without work.
        max_replicas: Upper bound for `replicas` (scale()); default 100, or `replicas`.
        idle_ttl_seconds: Seconds without work before scaling to `min_replicas`; 0 = never.
        image: The workers' image; default the operator's kubemap image.
        env: Extra environment variables of the workers (overrides the operator's PIP_*).
        resources: The worker container's resources (Kubernetes ResourceRequirements).
        node_selector: Node labels the workers must run on.
        service_account: The workers' ServiceAccount.
        packages: pip requirements every worker installs once, e.g. `["pandas==2.2.*"]`.
        queue: A Kueue LocalQueue of the namespace that admits the workers, one by one, by
            their resource requests (`resources`); the ones beyond the quota wait, and
            status() counts them (`admitted`, `waiting`). Needs Kueue on the cluster.
        cluster: A connected cluster to use instead of the kubeconfig's (tests).

    Raises:
        ConfigError: A value is out of range.
        ClusterError: The cluster cannot be reached.
    """

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
        queue: str | None = None,
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
                queue_name=queue,
            )
        except ValueError as exc:
            raise ConfigError(f"WorkerPool {name}: {exc}") from None

    def _custom(self) -> Any:
        return self.cluster.custom

    def get(self) -> dict[str, Any] | None:
        """The WorkerPool object as the API server has it, or None if there is none."""
        return get_pool(self.cluster, self.name)

    def create(self, *, exist_ok: bool = False) -> WorkerPool:
        """Create the WorkerPool (and the pool's signing-key Secret first).

        Args:
            exist_ok: A pool of that name that exists already is fine (it is left as it is).

        Returns:
            This pool.

        Raises:
            ConfigError: The pool exists (without exist_ok), or its queue cannot admit it
                (Kueue is not installed, or there is no such LocalQueue).
            ClusterError: The API server refused it.
        """
        if self.spec.queue_name:
            require_queue(self.cluster, self.spec.queue_name)
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
        """Set the number of workers while there is work (raising maxReplicas, or lowering
        minReplicas, when they are in the way).

        Args:
            replicas: The new number of workers.

        Raises:
            ConfigError: There is no such pool.
        """
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
        """The pool's status: replicas, ready, busy and idle workers, tasks served, the
        workers' Python, when it went idle, and in a queue the workers admitted and waiting.

        Raises:
            ConfigError: There is no such pool.
        """
        body = self.get()
        if body is None:
            raise ConfigError(f"no WorkerPool {self.name!r} in {self.cluster.namespace}")
        return WorkerPoolStatus.model_validate(body.get("status") or {})

    def delete(self, *, missing_ok: bool = False) -> None:
        """Delete the pool (its workers stop). A pool that does not exist is a ConfigError
        (a mistyped name must not read as done) unless missing_ok.

        Args:
            missing_ok: A pool that does not exist is fine.
        """
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
