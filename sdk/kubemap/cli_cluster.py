"""Cluster commands of the `kubemap` CLI: get, list, logs, cancel, results, crd.

They talk to the MapTasks of the current kubeconfig context (namespace: -n, else the
context's namespace, else "default"). cli.py adds them to its group through `register`.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kubemap.contract import (
    LABEL_TASK,
    task_label,
)
from kubemap.crd import render_crd
from kubemap.errors import KubemapError
from kubemap.models import MapTaskStatus

if TYPE_CHECKING:
    from kubemap.backends.kubeclient import Cluster


def _connect(namespace: str | None) -> Cluster:
    # The Kubernetes client takes ~1 s to import: only cluster commands pay for it, so
    # `kubemap run` on the local backend never loads it.
    from kubemap.backends.kubeclient import Cluster

    return Cluster.connect(namespace)


NAMESPACE = click.option(
    "-n", "--namespace", default=None, help="Namespace (default: the kubeconfig context's)."
)
CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "maptask.yaml"


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _task(cluster: Cluster, name: str) -> dict[str, Any]:
    body = cluster.get(name)
    if body is None:
        _fail(
            f"no MapTask {name!r} in namespace {cluster.namespace}: see `kubemap list -n {cluster.namespace}`"
        )
    assert body is not None
    return body


@click.command("get", short_help="Show one MapTask's progress.")
@click.argument("name")
@NAMESPACE
def get_cmd(name: str, namespace: str | None) -> None:
    """Phase, counts and index ranges of the MapTask NAME."""
    cluster = _connect(namespace)
    body = _task(cluster, name)
    status = MapTaskStatus.model_validate(body.get("status") or {})
    spec = body.get("spec") or {}
    click.echo(
        f"name:        {name}\nnamespace:   {cluster.namespace}\nmode:        {spec.get('mode')}"
    )
    click.echo(f"phase:       {status.phase.value}")
    click.echo(
        f"progress:    {status.succeeded}/{status.total} succeeded, {status.failed} failed, "
        f"{status.not_run} not run, {status.active} pods active"
    )
    if status.retries:
        click.echo(f"retries:     {status.retries} spent")
    reason = status.conditions[-1].reason if status.conditions else None
    if reason and status.phase.finished:
        click.echo(f"reason:      {reason}")
    if status.succeeded_indexes:
        click.echo(f"succeeded:   {_short(status.succeeded_indexes)}")
    if status.failed_indexes:
        click.echo(f"failed:      {_short(status.failed_indexes)}")
    for key, label in (("startTime", "started"), ("completionTime", "finished")):
        value = (body.get("status") or {}).get(key)
        if value:
            click.echo(f"{label + ':':<12} {value}")
    if status.message:
        click.echo(f"message:     {status.message}")
    if (spec.get("store") or {}).get("url"):
        click.echo(f"store:       {spec['store']['url'].rstrip('/')}/{name}")


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@click.command("list", short_help="List MapTasks.")
@NAMESPACE
@click.option(
    "-o",
    "--output",
    type=click.Choice(["wide"]),
    default=None,
    help="wide: also the pods that exist, the retries spent, age and store.",
)
def list_cmd(namespace: str | None, output: str | None) -> None:
    """Every MapTask in the namespace with its phase and counts."""
    cluster = _connect(namespace)
    wide = output == "wide"
    header = ("NAME", "MODE", "PHASE", "SUCCEEDED", "FAILED", "NOT-RUN", "ACTIVE")
    rows: list[tuple[str, ...]] = [(*header, "PODS", "RETRIES", "AGE", "STORE") if wide else header]
    tasks = cluster.list()
    pods = _pods_per_task(cluster) if wide and tasks else {}
    now = datetime.now(UTC)
    for item in tasks:
        st = MapTaskStatus.model_validate(item.get("status") or {})
        spec = item.get("spec") or {}
        name = item["metadata"]["name"]
        total = st.total or spec.get("count") or len(spec.get("items") or [])
        row: tuple[str, ...] = (
            name,
            str(spec.get("mode", "")),
            st.phase.value,
            f"{st.succeeded}/{total}",
            str(st.failed),
            str(st.not_run),
            str(st.active),
        )
        if wide:
            store = (spec.get("store") or {}).get("url")
            row = (
                *row,
                str(pods.get(task_label(name), 0)),
                str(st.retries),  # attempts spent beyond the first of their slice
                _age(item["metadata"].get("creationTimestamp"), now),
                f"{store.rstrip('/')}/{name}" if store else "-",
            )
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _pods_per_task(cluster: Cluster) -> dict[str, int]:
    """Pods that exist per task label, from one list call for the whole namespace."""
    found = cluster.call(
        "list pods", cluster.core.list_namespaced_pod, cluster.namespace, label_selector=LABEL_TASK
    ).items
    counts: dict[str, int] = {}
    for pod in found:
        task = (pod.metadata.labels or {}).get(LABEL_TASK, "")
        counts[task] = counts.get(task, 0) + 1
    return counts


def _age(created: str | None, now: datetime) -> str:
    """kubectl's style: 45s, 12m, 5h, 3d."""
    if not created:
        return "-"
    try:
        seconds = int(
            (now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
        )
    except ValueError:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


@click.command("cancel", short_help="Cancel a MapTask (its running pods are deleted).")
@click.argument("name")
@NAMESPACE
def cancel_cmd(name: str, namespace: str | None) -> None:
    """Set spec.suspend on MapTask NAME: the operator deletes its pods and marks it Cancelled.
    A task that has finished already is left as it is."""
    cluster = _connect(namespace)
    body = _task(cluster, name)
    phase = MapTaskStatus.model_validate(body.get("status") or {}).phase
    if phase.finished:
        click.echo(f"maptask {name} already {phase.value}: nothing to cancel, nothing changed")
        return
    cluster.suspend(name)
    click.echo(f"maptask {name} cancelled: its pods are being deleted")


@click.command("results", short_help="Print a function-mode MapTask's results as JSON lines.")
@click.argument("name")
@NAMESPACE
@click.option(
    "--store",
    default=None,
    help="Store prefix (default: the local store when it holds NAME, else the MapTask's "
    "spec.store.url).",
)
@click.option(
    "--partial", is_flag=True, help="Print the results of a cancelled task too (null where none)."
)
@click.option("--verbose", "-v", is_flag=True, help="Print the remote tracebacks of failures.")
def results_cmd(
    name: str, namespace: str | None, store: str | None, partial: bool, verbose: bool
) -> None:
    """One JSON line per index, in order (null where an index has no result); failures go to
    stderr, one line each (--verbose: with tracebacks), and make the exit code 1. A cancelled
    task's results need --partial."""
    from kubemap.api import MapRun
    from kubemap.core.status import Phase

    if store is None and namespace is None:
        store = _local_store_holding(name)  # a task run on this machine: no cluster needed
    if store is None:
        cluster = _connect(namespace)
        body = _task(cluster, name)
        spec = body.get("spec") or {}
        status = MapTaskStatus.model_validate(body.get("status") or {})
        if spec.get("mode") == "Container":
            _container_has_no_results(name, status)
        if status.phase is Phase.CANCELLED and not partial:
            _fail(
                f"MapTask {name} was cancelled: {status.succeeded} of {status.total} inputs have "
                f"results; `kubemap results {name} --partial` prints them (null for the rest)"
            )
        store = (spec.get("store") or {}).get("url")
        if not store:
            _fail(f"MapTask {name} has no spec.store, so no results; pass --store")
    run = MapRun.attach(name, store=store)
    values = run.results(partial=True)
    for value in values:
        try:
            click.echo(json.dumps(value))
        except TypeError:
            click.echo(json.dumps(repr(value)))
    failures = run.failures()
    if failures:
        from kubemap.report import print_failures

        not_run = len(run.not_run())
        succeeded = run.total - len(failures) - not_run
        click.echo(
            f"error: task {name}: {succeeded} succeeded, {len(failures)} failed, "
            f"{not_run} not run (null where no result)",
            err=True,
        )
        print_failures(failures, verbose=verbose)
        sys.exit(1)


def _local_store_holding(name: str) -> str | None:
    """The default local store's URL when it holds task NAME (run with the local backend)."""
    from kubemap.contract import META_KEY
    from kubemap.stores import FileStore, open_store
    from kubemap.stores.base import default_store_url

    url = default_store_url()
    store = open_store(url)  # the store layer parses the URL (file://, a plain path, s3://)
    if not isinstance(store, FileStore):
        return None  # an S3 default: the MapTask's own spec.store says where its results are
    return url if store.child(name).exists(META_KEY) else None


def _container_has_no_results(name: str, status: MapTaskStatus) -> None:
    """Container tasks write no results kubemap could read: say what there is instead."""
    failed = f" (failed: {_short(status.failed_indexes)})" if status.failed_indexes else ""
    _fail(
        f"MapTask {name} runs a container (mode Container): kubemap keeps no results for it, "
        f"only its status, {status.phase.value}: {status.succeeded} of {status.total} indices "
        f"succeeded, {status.failed} failed{failed}. Its output is in the pods' logs: "
        f"`kubemap logs {name} --index I` (failed indices' logs are kept after the task ends)"
    )


@click.command("crd", short_help="Print the MapTask CRD generated from the models.")
@click.option(
    "--check", is_flag=True, help=f"Compare with {CRD_FILE.name} instead; exit 1 if they differ."
)
def crd_cmd(check: bool) -> None:
    text = render_crd()
    if not check:
        click.echo(text, nl=False)
        return
    if not CRD_FILE.is_file():
        _fail(f"{CRD_FILE} not found: run from a kubemap checkout")
    if CRD_FILE.read_text() != text:
        _fail(
            f"{CRD_FILE} differs from the models: regenerate it with `kubemap crd > crds/maptask.yaml`"
        )
    click.echo(f"{CRD_FILE} is up to date")


def _guard(command: click.Command) -> click.Command:
    """kubemap errors print as one clear line, not a traceback."""
    callback = command.callback
    assert callback is not None

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except KubemapError as exc:
            _fail(str(exc))

    command.callback = wrapped
    return command


def register(group: click.Group) -> None:
    from kubemap.cli_logs import logs_cmd  # it builds on this module's helpers

    for command in (get_cmd, list_cmd, logs_cmd, cancel_cmd, results_cmd, crd_cmd):
        group.add_command(_guard(command))
