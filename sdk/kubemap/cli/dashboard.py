"""`kubemap dashboard`: open the read-only dashboard of the cluster's tasks and pools, or of
this machine's tasks.

With a cluster configured it finds the kubemap operator's pod, port-forwards a local port
on 127.0.0.1 to the dashboard the operator serves on its own loopback
(kubemap.backends.kubernetes.portforward), prints the URL and opens the browser. Without
one (or with --local) it serves the local store's tasks itself, with the same pages
(kubemap.pages.server over LocalSource). Ctrl-C stops either.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import webbrowser
from typing import TYPE_CHECKING

import click

from kubemap.cli.exits import exit_with_error, one_line_errors
from kubemap.cli.where import NoCluster, connect, namespace_option, store_option
from kubemap.contract import META_KEY
from kubemap.errors import KubemapError
from kubemap.pages.server import DashboardApp
from kubemap.pages.views import PoolRow, PoolView, TaskRow
from kubemap.stores import FileStore, Store, default_store_url, open_store
from kubemap.task.meta import read_meta
from kubemap.task.statusfile import read_status

if TYPE_CHECKING:
    from kubemap.backends.kubernetes.client import Cluster


class LocalSource:
    """The tasks of a directory store (this machine's runs): status.json and task.json."""

    def __init__(self, store: Store) -> None:
        self.root = store

    @property
    def where(self) -> str:
        return f"this machine ({self.root.url})"

    def _folders(self) -> list[str]:
        if not isinstance(self.root, FileStore) or not self.root.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.root.iterdir() if p.is_dir() and (p / META_KEY).is_file()
        )

    def _row(self, name: str) -> TaskRow | None:
        task = self.root.child(name)
        try:
            meta = read_meta(task)
        except KubemapError:
            return None  # half-written or removed meanwhile
        status = read_status(task) or {}
        return TaskRow(
            namespace="",
            name=name,
            phase=str(status.get("phase") or "Pending"),
            total=int(status.get("total") or meta.total),
            succeeded=int(status.get("succeeded") or 0),
            failed=int(status.get("failed") or 0),
            active=int(status.get("active") or 0),
            message=str(status.get("message") or ""),
            created=meta.created,
        )

    def _rows(self) -> list[TaskRow]:
        rows = [row for name in self._folders() if (row := self._row(name)) is not None]
        return sorted(rows, key=lambda r: r.created, reverse=True)

    async def tasks(self) -> list[TaskRow]:
        return await asyncio.to_thread(self._rows)

    async def task(self, namespace: str, name: str) -> TaskRow | None:
        if namespace or "/" in name or name.startswith("."):
            return None
        return await asyncio.to_thread(self._row, name)

    async def task_store(self, namespace: str, name: str) -> Store | None:
        return self.root.child(name)

    async def pools(self) -> list[PoolRow]:
        return []  # warm pools live on clusters

    async def pool(self, namespace: str, name: str) -> PoolView | None:
        return None

    def rerun_command(self, row: TaskRow) -> str:
        return f"kubemap retry {row.name}"


def serve_local(store_url: str, port: int, *, browser: bool) -> None:
    """Serve the local store's dashboard on 127.0.0.1:port until interrupted."""
    source = LocalSource(open_store(store_url))
    app = DashboardApp(source)

    async def run() -> None:
        bound = await app.start("127.0.0.1", port)
        _announce(f"http://127.0.0.1:{bound}/", f"local tasks in {source.root.url}", browser)
        try:
            await asyncio.Event().wait()
        finally:
            await app.stop()

    asyncio.run(run())


def _announce(url: str, what: str, browser: bool) -> None:
    click.echo(f"kubemap dashboard of {what}: {url}  (Ctrl-C stops it)")
    if browser:
        with contextlib.suppress(Exception):
            webbrowser.open(url)


@click.command("dashboard", short_help="Open the read-only dashboard of tasks and pools.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Local port on 127.0.0.1 (0: a free one).",
)
@click.option("--no-browser", is_flag=True, help="Print the URL; do not open a browser.")
@click.option(
    "--local",
    "local",
    is_flag=True,
    help="Show this machine's tasks (the local store) even when a cluster is configured.",
)
@namespace_option
@store_option
def dashboard_cmd(
    port: int, no_browser: bool, local: bool, namespace: str | None, store: str | None
) -> None:
    """Open the dashboard: every task with its progress, a page per task (workers x time,
    items/s, where the time went, the slowest workers, failures with their tracebacks and the
    command that reruns them) and a page per warm pool (its workers, busy or idle).

    With a cluster configured (KUBECONFIG), it port-forwards 127.0.0.1:PORT to the kubemap
    operator's pod, which serves the dashboard on its loopback only: you need `create` on
    `pods/portforward` in the operator's namespace, as for `kubectl port-forward`. The
    operator is looked for in $KUBEMAP_OPERATOR_NAMESPACE, else in -n's namespace (default:
    the context's) and kubemap-system; the pages show every namespace it watches. Without a
    cluster, or with --local, it serves this machine's tasks from the local store itself."""
    if not local:
        try:
            cluster = connect(namespace)
        except NoCluster:
            cluster = None
        if cluster is not None:
            _forward(cluster, port, browser=not no_browser)
            return
        if namespace is not None:
            exit_with_error(
                "-n names a cluster namespace, but no cluster is configured (KUBECONFIG)"
            )
    url = store or default_store_url()
    if not isinstance(open_store(url), FileStore):
        exit_with_error(
            f"the local dashboard reads a directory store, not {url}: pass --store with the "
            "directory your tasks ran in"
        )
    with contextlib.suppress(KeyboardInterrupt):
        serve_local(url, port, browser=not no_browser)


def _forward(cluster: Cluster, port: int, *, browser: bool) -> None:
    # The Kubernetes client takes ~1 s to import: only the cluster half pays (as where.connect).
    from kubemap.backends.kubernetes.portforward import Forwarder, find_operator

    pod = find_operator(cluster)
    if not pod.dashboard_port:
        exit_with_error(
            f"the operator {pod.namespace}/{pod.name} serves no dashboard: install the chart "
            "with dashboard.enabled=true"
        )
    forwarder = Forwarder(cluster, pod)
    forwarder.check()
    bound = forwarder.listen(port)
    _announce(
        f"http://127.0.0.1:{bound}/",
        f"the cluster at {cluster.host} (operator {pod.namespace}/{pod.name})",
        browser,
    )
    stop = threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        forwarder.close()


def register(group: click.Group) -> None:
    group.add_command(one_line_errors(dashboard_cmd))
