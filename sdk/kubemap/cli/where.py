"""Where a task named on the command line lives, and this machine's tasks.

`kubemap results/retry/get/cancel/logs NAME` work on a task run by the local backend (its
store holds NAME/status.json, which only a local run writes) and on a MapTask alike: with
no --backend they look in both places, and say so when NAME is in both, or in neither.
`kubemap list` shows the local store's tasks next to the cluster's MapTasks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kubemap.contract import META_KEY, STATUS_KEY
from kubemap.errors import ClusterError, ConfigError, KubemapError, StoreError
from kubemap.stores import FileStore, default_store_url, open_store

if TYPE_CHECKING:
    from kubemap.api.maprun import MapRun
    from kubemap.backends.kubernetes.client import Cluster

F = TypeVar("F", bound=Callable[..., Any])

LOCAL = "local"
KUBERNETES = "kubernetes"


def backend_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--backend",
        type=click.Choice([LOCAL, KUBERNETES]),
        default=None,
        help=f"Where {what}: local (this machine's store) or kubernetes (the cluster's "
        "MapTasks) [default: wherever the task is].",
    )


def namespace_option(f: F) -> F:
    return click.option(
        "-n", "--namespace", default=None, help="Namespace (default: the kubeconfig context's)."
    )(f)


def store_option(f: F) -> F:
    return click.option(
        "--store",
        metavar="URL",
        default=None,
        help="Local tasks: the store they are in [default: $KUBEMAP_STORE or ~/.cache/...].",
    )(f)


class NoCluster(KubemapError):
    """No kubeconfig (or in-cluster account): the cluster half of a command is skipped."""


def connect(namespace: str | None) -> Cluster:
    """The cluster of the current kubeconfig, with an error that names this CLI's options.
    (The Kubernetes client takes ~1 s to import: only commands that need a cluster pay.)"""
    from kubemap.backends.kubernetes.client import Cluster

    try:
        return Cluster.connect(namespace)
    except ClusterError as exc:
        if "no Kubernetes configuration" not in str(exc):
            raise
        raise NoCluster(
            "no cluster configured (no KUBECONFIG, ~/.kube/config or in-cluster account): set "
            "KUBECONFIG to reach MapTasks; `--backend local` works on this machine's tasks"
        ) from None


@dataclass(frozen=True)
class Where:
    """A task found: on this machine (`store` is the store URL it is in) or a MapTask."""

    backend: str
    name: str
    store: str | None = None
    cluster: Cluster | None = None
    body: dict[str, Any] | None = None

    @property
    def local(self) -> bool:
        return self.backend == LOCAL

    def flags(self) -> str:
        """What to add to `kubemap results/retry NAME` to reach this task again."""
        if self.local:
            default = self.store == default_store_url()
            return "" if default or self.store is None else f" --store {self.store}"
        namespace = self.cluster.namespace if self.cluster else None
        return f" --backend kubernetes -n {namespace}" if namespace else " --backend kubernetes"


def _in_store(name: str, store: str | None) -> tuple[str, bool, bool]:
    """(store URL, a local run recorded NAME there, NAME's files are there at all)."""
    url = store or default_store_url()
    task = open_store(url).child(name)
    try:
        ran_here = task.exists(STATUS_KEY)
        return url, ran_here, ran_here or task.exists(META_KEY)
    except StoreError:
        if store:
            raise  # the store asked for: its error is the answer
        return url, False, False  # a default store out of reach: the cluster may hold NAME


def locate(
    name: str, *, backend: str | None, store: str | None = None, namespace: str | None = None
) -> Where:
    """The task NAME: a local one in the store (given or default), else the cluster's
    MapTask. -n or --backend kubernetes mean the cluster; --backend local this machine."""
    if backend == KUBERNETES or (backend is None and namespace is not None):
        return _on_cluster(name, connect(namespace))
    url, ran_here, stored = _in_store(name, store)
    if backend == LOCAL:
        if not stored:
            raise ConfigError(
                f"no task {name!r} in the local store {url}: see `kubemap list --backend "
                "local`, or pass --store with the store it ran in"
            )
        return Where(LOCAL, name, store=url)
    try:
        cluster: Cluster | None = connect(namespace)
    except NoCluster:
        cluster = None
    body = None
    if cluster is not None:
        try:
            body = cluster.get(name)
        except ClusterError:
            if not stored:
                raise  # the cluster is where NAME could be: its error is the answer
    if ran_here and body is not None:
        assert cluster is not None
        raise ConfigError(
            f"{name!r} names two tasks: one run on this machine (in {url}) and MapTask {name} "
            f"in namespace {cluster.namespace}: pass --backend local or --backend kubernetes"
        )
    if body is not None:
        assert cluster is not None
        return Where(KUBERNETES, name, cluster=cluster, body=body)
    if stored:
        return Where(LOCAL, name, store=url)
    elsewhere = (
        f"no MapTask {name!r} in namespace {cluster.namespace}"
        if cluster is not None
        else "no cluster configured (KUBECONFIG) to look for a MapTask"
    )
    raise ConfigError(
        f"no task {name!r} in the local store {url}, and {elsewhere}: see `kubemap list`"
    )


def _on_cluster(name: str, cluster: Cluster) -> Where:
    body = cluster.get(name)
    if body is None:
        raise ConfigError(
            f"no MapTask {name!r} in namespace {cluster.namespace}: see `kubemap list -n "
            f"{cluster.namespace}` (tasks run on this machine: `kubemap list --backend local`)"
        )
    return Where(KUBERNETES, name, cluster=cluster, body=body)


def attach(where: Where) -> MapRun:
    """The task as a MapRun: its status from the MapTask, or from what the local run recorded."""
    from kubemap.api.maprun import MapRun

    if where.local:
        return MapRun.attach(where.name, store=where.store)
    namespace = where.cluster.namespace if where.cluster else None
    return MapRun.attach(where.name, backend=KUBERNETES, namespace=namespace)


@dataclass(frozen=True)
class LocalTask:
    name: str
    run: MapRun
    created: dt.datetime | None


def local_tasks(store: str | None) -> list[LocalTask]:
    """The tasks of a directory store (a task: a folder with task.json), oldest first; an
    S3 store is not listed (its tasks are the cluster's, or `kubemap list` would list the
    bucket)."""
    from kubemap.api.maprun import MapRun
    from kubemap.task.meta import read_meta

    root = open_store(store or default_store_url())
    if not isinstance(root, FileStore) or not root.root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.root.iterdir() if p.is_dir()):
        if not (folder / META_KEY).is_file():
            continue  # the cache, or anything not kubemap's
        try:
            task = root.child(folder.name)
            meta = read_meta(task)
            run = MapRun.attach(folder.name, store=root.url)
        except KubemapError:
            continue  # half-written or removed meanwhile: not a task to show
        found.append(LocalTask(folder.name, run, _parse_time(meta.created)))
    return sorted(found, key=lambda t: t.created or dt.datetime.min.replace(tzinfo=dt.UTC))


def _parse_time(text: str) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def age(created: dt.datetime | None, now: dt.datetime) -> str:
    """kubectl's style: 45s, 12m, 5h, 3d."""
    if created is None:
        return "-"
    seconds = int((now - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"
