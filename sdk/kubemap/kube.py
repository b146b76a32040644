"""The Kubernetes backend: a run is a MapTask custom resource, reconciled by the operator.

The SDK has already written fn.pkl, the inputs and task.json to the task's prefix in S3;
this module creates the MapTask (function mode, spec.store.url = the store prefix, name =
MapRun.name), follows its status, and cancels by setting spec.suspend. Results and error
records are read from the store by MapRun, exactly as for the local backend.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubemap.backend import (
    REASON_CANCELLED,
    REASON_DEADLINE,
    REASON_FAILED_INDEXES,
    REASON_INFRASTRUCTURE,
    RunStatus,
)
from kubemap.contract import API_VERSION, GROUP, KIND, PLURAL, VERSION
from kubemap.core.batching import auto_items_per_pod
from kubemap.errors import ClusterError, ConfigError
from kubemap.models import (
    MapTaskSpec,
    MapTaskStatus,
    Mode,
    Phase,
    PodTemplate,
    RunOptions,
    StoreRef,
)
from kubemap.poolmodels import ANNOTATION_PYTHON, python_minor
from kubemap.store import Store

POLL_SECONDS = 0.5
MIN_FETCH_SECONDS = 0.25
INSTALL_HINT = (
    "install kubemap into the cluster first: "
    "helm install kubemap charts/kubemap --namespace kubemap-system --create-namespace"
)
T = TypeVar("T")

# MapTask condition reasons -> why a finished run did not succeed (kubemap.backend.REASON_*).
REASONS = {
    "DeadlineExceeded": REASON_DEADLINE,
    "Suspended": REASON_CANCELLED,
    "FailedIndexes": REASON_FAILED_INDEXES,
    "TooManyFailedRanges": REASON_FAILED_INDEXES,
    "UsageError": REASON_INFRASTRUCTURE,
    "InvalidSpec": REASON_INFRASTRUCTURE,
}


@dataclass(frozen=True)
class Cluster:
    """An API client for the current kubeconfig (or the in-cluster service account)."""

    api: client.ApiClient
    namespace: str
    host: str

    @classmethod
    def connect(cls, namespace: str | None = None, context: str | None = None) -> Cluster:
        current_ns = "default"
        try:
            config.load_incluster_config()
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as fh:
                current_ns = fh.read().strip() or current_ns
        except (config.ConfigException, OSError):
            try:
                config.load_kube_config(context=context)
                _, active = config.list_kube_config_contexts()
                current_ns = (active or {}).get("context", {}).get("namespace") or current_ns
            except (config.ConfigException, OSError, TypeError) as exc:
                raise ClusterError(
                    f"no Kubernetes configuration found ({exc}): set KUBECONFIG or ~/.kube/config, "
                    "or use backend='local'"
                ) from None
        api = client.ApiClient()
        return cls(api=api, namespace=namespace or current_ns, host=str(api.configuration.host))

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One API call; unreachable servers and a missing CRD become clear ClusterErrors."""
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and _missing_resource(exc):
                raise ClusterError(
                    f"the MapTask resource is not installed in the cluster at {self.host}: {INSTALL_HINT}"
                ) from None
            raise
        except (HTTPError, OSError) as exc:
            raise ClusterError(
                f"cannot reach the Kubernetes API at {self.host} to {what} ({type(exc).__name__}): "
                "check KUBECONFIG and that the cluster is running"
            ) from None

    # --- MapTask operations -----------------------------------------------------------
    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            body = self.call(
                "read MapTask " + name,
                self.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ClusterError(
                f"reading MapTask {name} in {self.namespace} failed: {_message(exc)}"
            ) from None
        return dict(body)

    def list(self) -> list[dict[str, Any]]:
        try:
            body = self.call(
                "list MapTasks",
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
            )
        except ApiException as exc:
            raise ClusterError(
                f"listing MapTasks in {self.namespace} failed: {_message(exc)}"
            ) from None
        return list(body.get("items") or [])

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        try:
            created = self.call(
                "create MapTask " + name,
                self.custom.create_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                body,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise ConfigError(
                    f"a MapTask named {name!r} already exists in namespace {self.namespace}: pick another "
                    f"name, or delete it with `kubectl delete mt {name} -n {self.namespace}`"
                ) from None
            raise ClusterError(
                f"creating MapTask {name} in {self.namespace} was refused: {_message(exc)}"
            ) from None
        return dict(created)

    def suspend(self, name: str) -> None:
        try:
            self.call(
                "cancel MapTask " + name,
                self.custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                {"spec": {"suspend": True}},
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise ClusterError(f"cancelling MapTask {name} failed: {_message(exc)}") from None


def _missing_resource(exc: ApiException) -> bool:
    """404 for the resource type itself (CRD absent), not for one object."""
    text = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or "")
    return "could not find the requested resource" in text or "page not found" in text


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return f"HTTP {exc.status} {exc.reason}"


def _require_s3(store_url: str) -> None:
    if not store_url.startswith("s3://"):
        raise ConfigError(
            f"backend='kubernetes' needs an S3 store that pods can reach, got {store_url!r}: "
            "pass store='s3://bucket/prefix' or set KUBEMAP_STORE"
        )


def build_maptask(name: str, store_url: str, total: int, options: RunOptions) -> dict[str, Any]:
    """The MapTask the SDK creates for a function-mode run (validated by the shared model)."""
    _require_s3(store_url)
    base = store_url.rstrip("/").rsplit("/", 1)[0]
    template = PodTemplate(
        image=options.image,
        env=[{"name": k, "value": v} for k, v in (options.env or {}).items()] or None,
        resources=options.resources,
        node_selector=options.node_selector,
        service_account_name=options.service_account,
    )
    # On a pool the pool's size bounds a task, not parallelism (unless the user sets one).
    parallelism = options.parallelism or (10_000 if options.pool else 10)
    # A pool leases guided chunks itself; pods get a batch size chosen for them (batching.py).
    batch = options.items_per_pod or (1 if options.pool else auto_items_per_pod(total, parallelism))
    spec = MapTaskSpec(
        mode=Mode.FUNCTION,
        count=total,
        items_per_pod=batch,
        parallelism=parallelism,
        pool=options.pool,
        backoff_limit_per_index=options.retries,
        min_success_ratio=options.min_success_ratio,
        active_deadline_seconds=math.ceil(options.timeout) if options.timeout else None,
        store=StoreRef(url=base),
        template=template,
    )
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "annotations": {ANNOTATION_PYTHON: python_minor()}},
        "spec": spec.to_wire(),
    }


def run_status(body: dict[str, Any] | None, total: int) -> RunStatus:
    if body is None:
        return RunStatus(phase=Phase.PENDING, total=total)
    status = MapTaskStatus.model_validate(body.get("status") or {})
    reason: str | None = None
    if status.phase in (Phase.FAILED, Phase.CANCELLED):
        cond = status.conditions[-1].reason if status.conditions else None
        reason = REASONS.get(
            cond or "",
            REASON_CANCELLED if status.phase is Phase.CANCELLED else REASON_FAILED_INDEXES,
        )
    return RunStatus(
        phase=status.phase,
        total=status.total or total,
        succeeded=status.succeeded,
        failed=status.failed,
        active=status.active,
        reason=reason,
        message=status.message,
    )


class KubeRunHandle:
    """A MapTask being run by the operator; status is read from the API (polled)."""

    def __init__(self, cluster: Cluster, name: str, total: int, task: Store) -> None:
        self.cluster = cluster
        self.name = name
        self.total = total
        self.task = task
        self._last = RunStatus(phase=Phase.PENDING, total=total)
        self._fetched = -1e9
        self._lock = threading.Lock()

    def status(self) -> RunStatus:
        with self._lock:
            if time.monotonic() - self._fetched < MIN_FETCH_SECONDS:
                return self._last  # a progress bar polls often: spare the API server
        body = self.cluster.get(self.name)
        if body is None and self._last.finished:
            return self._last  # deleted after it finished (ttlSecondsAfterFinished)
        if body is None:
            raise ClusterError(
                f"MapTask {self.name} disappeared from namespace {self.cluster.namespace} before it "
                f"finished; results that finished stay in {self.task.url}"
            )
        with self._lock:
            self._last = run_status(body, self.total)
            self._fetched = time.monotonic()
            return self._last

    def wait(self, timeout: float | None = None) -> RunStatus:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.status()
            if current.finished:
                return current
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return current
            time.sleep(POLL_SECONDS if left is None else max(0.0, min(POLL_SECONDS, left)))

    def cancel(self) -> None:
        self.cluster.suspend(self.name)


class KubernetesBackend:
    name = "kubernetes"

    def preflight(self, store_url: str, options: RunOptions) -> None:
        """Before uploading anything: an S3 store, a reachable API, the MapTask CRD installed."""
        _require_s3(store_url)
        cluster = Cluster.connect(options.namespace)
        try:
            cluster.call(
                "list MapTasks",
                cluster.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                cluster.namespace,
                PLURAL,
                limit=1,
            )
        except ApiException as exc:
            raise ClusterError(
                f"cannot list MapTasks in namespace {cluster.namespace} at {cluster.host}: "
                f"{_message(exc)}; check your RBAC or pick another namespace"
            ) from None
        if options.pool:
            from kubemap.workerpool import check_pool_python

            check_pool_python(cluster, options.pool)

    def start(self, task: Store, total: int, options: RunOptions, name: str) -> KubeRunHandle:
        body = build_maptask(name, task.url, total, options)
        cluster = Cluster.connect(options.namespace)
        if options.pool:
            from kubemap.workerpool import ensure_pool  # the pool API sits on this module

            ensure_pool(cluster, options.pool, replicas=options.parallelism)
        cluster.create(body)
        return KubeRunHandle(cluster, name, total, task)
