"""The Kubernetes backend: a run is a MapTask custom resource, reconciled by the operator.

The SDK has already written fn.pkl, the inputs and task.json to the task's prefix in S3;
this module creates the MapTask (function mode, spec.store.url = the store prefix, name =
MapRun.name), follows its status, and cancels by setting spec.suspend. Results and error
records are read from the store by MapRun, exactly as for the local backend.

Signing (kubemap.task.signing): `task_signer` makes the task's key before the upload (or reads
its pool's); `start` puts it in a Secret before the MapTask exists, then gives the Secret
the MapTask as owner (backends/keys.py).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubemap.backends.base import wait_by_polling
from kubemap.backends.kubernetes import keys
from kubemap.backends.kubernetes.client import Cluster, ClusterClient, message_of
from kubemap.backends.kubernetes.discovery import ClusterDefaults, check_submit, find_defaults
from kubemap.backends.kubernetes.queues import require_queue
from kubemap.backends.kubernetes.workerpools import (
    create_default_pool,
    get_pool,
    new_pool_replicas,
    refuse_other_python,
)
from kubemap.contract import ANNOTATION_RETRY, API_VERSION, GROUP, KIND, PLURAL, VERSION
from kubemap.core.parallelism import default_parallelism
from kubemap.core.ranges import IndexRanges
from kubemap.core.slicing import auto_items_per_pod
from kubemap.core.status import Phase, RunStatus, run_status
from kubemap.errors import ClusterError, ConfigError
from kubemap.resources.maptask import MapTaskSpec, Mode, PodTemplate, Speculation, StoreRef
from kubemap.resources.options import RunOptions
from kubemap.resources.workerpool import ANNOTATION_PYTHON, python_minor
from kubemap.stores import open_store
from kubemap.stores.base import Store
from kubemap.task.signing import Signer, new_key

POLL_SECONDS = 0.5
DEFAULT_S3_SECRET = "kubemap-s3"  # the chart's name when s3.existingSecret is empty
MIN_FETCH_SECONDS = 0.25


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
        tolerations=options.tolerations,
        service_account_name=options.service_account,
        priority_class_name=options.priority,
    )
    # On a pool the pool's size bounds a task, not parallelism (unless the user sets one).
    parallelism = options.parallelism or default_parallelism(pool=options.pool is not None)
    # A pool leases guided chunks itself; pods get a batch size chosen for them (batching.py).
    batch = options.items_per_pod or (1 if options.pool else auto_items_per_pod(total, parallelism))
    spec = MapTaskSpec(
        mode=Mode.FUNCTION,
        count=total,
        items_per_pod=batch,
        parallelism=parallelism,
        pool=options.pool,
        packages=options.packages,
        backoff_limit_per_index=options.retries,
        min_success_ratio=options.min_success_ratio,
        active_deadline_seconds=math.ceil(options.timeout) if options.timeout else None,
        store=StoreRef(url=base, endpoint=options.store_endpoint),
        template=template,
        queue_name=options.queue,
        speculation=speculation_spec(options.speculation),
    )
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "annotations": {ANNOTATION_PYTHON: python_minor()}},
        "spec": spec.to_wire(),
    }


def speculation_spec(option: bool | Speculation) -> Speculation | None:
    """spec.speculation of the option: unset when on with the defaults (a small spec)."""
    if option is True:
        return None
    return option if isinstance(option, Speculation) else Speculation(enabled=False)


def require_s3_secret(cluster: Cluster, defaults: ClusterDefaults | None) -> None:
    """Refuse, before anything is uploaded, a namespace without the Secret worker pods read
    their S3 keys from: its pods would wait for it for ever (CreateContainerConfigError).
    Its name is the chart's (kubemap-defaults s3Secret), else kubemap-s3. A user who may not
    read Secrets is not blocked: the operator then fails the task naming the Secret."""
    name = (defaults.s3_secret if defaults else "") or DEFAULT_S3_SECRET
    if cluster.secret_exists(name) is not False:
        return
    ns = cluster.namespace
    raise ConfigError(
        f'Secret "{name}" (the S3 keys of worker pods) not found in namespace {ns}: create '
        f"it with `kubectl create secret generic {name} -n {ns} "
        "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...`, or "
        f"list {ns} in the chart value operator.watchNamespaces (with s3.accessKeyId and "
        "s3.secretAccessKey set), or pick a namespace that has it; nothing was submitted"
    )


class KubeRunHandle:
    """A MapTask being run by the operator; status is read from the API (polled).

    After a retry request (`retry_token`), the task counts as Pending until the operator
    has honoured that token (status.retryToken), so the previous verdict is not mistaken
    for the retry's."""

    def __init__(
        self,
        cluster: ClusterClient,
        name: str,
        total: int,
        task: Store,
        *,
        retry_token: str | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.cluster = cluster
        self.signer = signer  # MapRun checks result objects with it
        self.name = name
        self.total = total
        self.task = task
        self.retry_token = retry_token
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
        record = body.get("status") or {}
        with self._lock:
            if self.retry_token is not None and record.get("retryToken") != self.retry_token:
                self._last = RunStatus(phase=Phase.PENDING, total=self.total)
            else:
                self._last = run_status(record, total=self.total)
            self._fetched = time.monotonic()
            return self._last

    def wait(self, timeout: float | None = None) -> RunStatus:
        return wait_by_polling(self, timeout, every=POLL_SECONDS)

    def done(self) -> bool:
        return self.status().finished

    def cancel(self) -> bool:
        body = self.cluster.get(self.name)
        if body is None or run_status(body.get("status"), total=self.total).finished:
            return False
        self.cluster.suspend(self.name)
        with self._lock:
            self._fetched = -1e9  # the next status() reads the cancellation
        return True


def attach_maptask(
    name: str, *, store: str | None, namespace: str | None
) -> tuple[Store, int, KubeRunHandle]:
    """The store prefix, size and a live handle of the existing MapTask `name`."""
    cluster = Cluster.connect(namespace)
    body = cluster.get(name)
    if body is None:
        raise ClusterError(
            f"no MapTask {name!r} in namespace {cluster.namespace}: see `kubemap list -n "
            f"{cluster.namespace}`"
        )
    spec = body.get("spec") or {}
    base = store or ((spec.get("store") or {}).get("url"))
    if not base:
        raise ConfigError(
            f"MapTask {name} keeps no results in a store (container mode): read its pods' "
            "output with `kubemap logs`"
        )
    task = open_store(base).child(name)
    total = int((body.get("status") or {}).get("total") or spec.get("count") or 0)
    # No key Secret (a MapTask made without the SDK): its results are read unchecked.
    signer = keys.task_signer(cluster, name, spec.get("pool"))
    return task, total, KubeRunHandle(cluster, name, total, task, signer=signer)


_UNREAD: Any = object()  # a pool the submit has not read yet (None: read, and missing)


class KubernetesBackend:
    """Runs tasks as MapTasks. One instance serves one submit (get_backend makes a new one
    per call) and keeps what the submit's steps share -- discover, preflight, task_signer,
    start -- so that a submit connects to the cluster once, reads the chart's defaults
    once and reads its WorkerPool once."""

    name = "kubernetes"

    def __init__(self) -> None:
        self._signers: dict[str, Signer] = {}
        self._cluster: Cluster | None = None
        self._defaults: dict[str, ClusterDefaults | None] = {}
        self._pools: dict[str, dict[str, Any] | None] = {}  # read by preflight, used by start

    def connect(self, namespace: str | None) -> Cluster:
        """The submit's connection: made by the first step that needs it, then reused."""
        if self._cluster is None or (namespace and namespace != self._cluster.namespace):
            self._cluster = Cluster.connect(namespace)
        return self._cluster

    def chart_defaults(self, namespace: str | None) -> ClusterDefaults | None:
        """The chart's defaults (kubemap-defaults), read once; None when there are none, or
        no cluster or ConfigMap can be reached (the preflight then names what is wrong)."""
        try:
            cluster = self.connect(namespace)
        except ClusterError:
            return None
        if cluster.namespace not in self._defaults:
            try:
                self._defaults[cluster.namespace] = find_defaults(cluster)
            except ClusterError:
                self._defaults[cluster.namespace] = None
        return self._defaults[cluster.namespace]

    def discover(self, options: RunOptions) -> Store | None:
        """Before anything is written: refuse a worker image of another Python; the chart's
        default store (through the chart's S3 endpoint) when the caller named none."""
        found = check_submit(
            options.store, options.image, lambda: self.chart_defaults(options.namespace)
        )
        return found.open() if found else None

    def task_signer(self, name: str, options: RunOptions) -> Signer:
        """The signer of task `name`, before its files are uploaded: a fresh key, or on a
        pool the pool's key (read or created now: its workers cannot mount one per task)."""
        if options.pool:
            key = keys.pool_key(self.connect(options.namespace), options.pool).key
        else:
            key = new_key()
        signer = Signer(name, key)
        self._signers[name] = signer
        return signer

    def preflight(self, store_url: str, options: RunOptions) -> None:
        """Before uploading anything: an S3 store, a reachable API, the MapTask CRD installed,
        the S3 Secret of the pods, Kueue's LocalQueue when queue= is given, and a pool whose
        workers run our Python."""
        _require_s3(store_url)
        cluster = self.connect(options.namespace)
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
                f"{message_of(exc)}; check your RBAC or pick another namespace"
            ) from None
        require_s3_secret(cluster, self.chart_defaults(options.namespace))
        if options.queue:
            require_queue(cluster, options.queue)
        if options.pool:
            pool = get_pool(cluster, options.pool)
            refuse_other_python(pool, options.pool)
            self._pools[options.pool] = pool

    def start(self, task: Store, total: int, options: RunOptions, name: str) -> KubeRunHandle:
        body = build_maptask(name, task.url, total, options)
        cluster = self.connect(options.namespace)
        signer = self._signers.pop(name, None)
        if options.pool:
            pool = self._pools.pop(options.pool, _UNREAD)
            if pool is _UNREAD:
                pool = get_pool(cluster, options.pool)
            if pool is None:
                replicas = new_pool_replicas(options.parallelism)
                pool = create_default_pool(cluster, options.pool, replicas=replicas)
            uid = (pool.get("metadata") or {}).get("uid")
            if signer is not None and uid:
                keys.adopt_pool_key(cluster, options.pool, str(uid))
            cluster.create(body)
            return KubeRunHandle(cluster, name, total, task, signer=signer)
        if signer is not None:
            keys.create_task_key(cluster, signer)  # first: no pod may start without it
        try:
            created = cluster.create(body)
        except BaseException:
            if signer is not None:
                keys.delete_task_key(cluster, name)
            raise
        if signer is not None:
            keys.adopt_task_key(cluster, name, str((created.get("metadata") or {})["uid"]))
        return KubeRunHandle(cluster, name, total, task, signer=signer)

    def retry(
        self, task: Store, total: int, options: RunOptions, name: str, succeeded: IndexRanges
    ) -> KubeRunHandle:
        """Ask the operator to rerun what has no result: a new kubemap.io/retry token (and
        spec.suspend false, for a cancelled task). The operator keeps the succeeded indices
        it recorded; `succeeded` (from the store) is not needed here."""
        cluster = self.connect(options.namespace)
        token = request_retry(cluster, name)
        return KubeRunHandle(cluster, name, total, task, retry_token=token)


def request_retry(cluster: Cluster, name: str) -> str:
    """Set a fresh retry token on MapTask `name` (and unsuspend it); returns the token."""
    token = f"{time.time_ns():x}"
    patch = {"metadata": {"annotations": {ANNOTATION_RETRY: token}}, "spec": {"suspend": False}}
    try:
        cluster.call(
            "retry MapTask " + name,
            cluster.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
            name,
            patch,
            _content_type="application/merge-patch+json",
        )
    except ApiException as exc:
        if exc.status == 404:
            raise ConfigError(
                f"no MapTask {name!r} in namespace {cluster.namespace} to retry: it was deleted "
                "(ttlSecondsAfterFinished?); submit the task again"
            ) from None
        raise ClusterError(f"retrying MapTask {name} failed: {message_of(exc)}") from None
    return token
