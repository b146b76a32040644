"""Cluster commands of the `kubemap` CLI: get, list, logs, cancel, results, crd.

They talk to the MapTasks of the current kubeconfig context (namespace: -n, else the
context's namespace, else "default"). cli.py adds them to its group through `register`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kubemap.contract import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_COUNT,
    LABEL_INDEX,
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
        f"progress:    {status.succeeded}/{status.total} succeeded, {status.failed} failed, {status.active} pods active"
    )
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
def list_cmd(namespace: str | None) -> None:
    """Every MapTask in the namespace with its phase and counts."""
    cluster = _connect(namespace)
    rows = [("NAME", "MODE", "PHASE", "SUCCEEDED", "FAILED", "ACTIVE")]
    for item in cluster.list():
        st = MapTaskStatus.model_validate(item.get("status") or {})
        total = st.total or (item.get("spec") or {}).get("count") or 0
        rows.append(
            (
                item["metadata"]["name"],
                str((item.get("spec") or {}).get("mode", "")),
                st.phase.value,
                f"{st.succeeded}/{total}",
                str(st.failed),
                str(st.active),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@click.command("logs", short_help="Print the logs of a MapTask's pods.")
@click.argument("name")
@click.option(
    "--index", "index", type=int, default=None, help="Only the latest pod that ran this index."
)
@NAMESPACE
def logs_cmd(name: str, index: int | None, namespace: str | None) -> None:
    """Logs of the pods of MapTask NAME that still exist (running, and failed ones kept for
    their logs; succeeded pods are removed once recorded)."""
    cluster = _connect(namespace)
    _task(cluster, name)
    pods = cluster.call(
        "list pods",
        cluster.core.list_namespaced_pod,
        cluster.namespace,
        label_selector=f"{LABEL_TASK}={task_label(name)}",
    ).items
    chosen = []
    for pod in pods:
        meta = pod.metadata
        start = int((meta.labels or {}).get(LABEL_INDEX, 0))
        count = int((meta.annotations or {}).get(ANNOTATION_COUNT, 1))
        attempt = int((meta.annotations or {}).get(ANNOTATION_ATTEMPT, 0))
        if index is None or start <= index < start + count:
            chosen.append((start, attempt, meta.name))
    if index is not None:
        chosen = sorted(chosen, key=lambda c: c[1])[-1:]
    if not chosen:
        where = f"index {index}" if index is not None else "this task"
        _fail(
            f"no pod of {where} exists any more (succeeded pods are removed); "
            f"for function-mode failures see `kubemap results {name}`"
        )
    for start, attempt, pod_name in sorted(chosen):
        click.echo(f"==> {pod_name} (index {start}, attempt {attempt}) <==")
        try:
            text = cluster.call(
                "read logs", cluster.core.read_namespaced_pod_log, pod_name, cluster.namespace
            )
        except Exception as exc:  # a pod that never started has no logs: say so, go on
            text = f"(no logs: {getattr(exc, 'reason', exc)})\n"
        click.echo(str(text), nl=not str(text).endswith("\n"))


@click.command("cancel", short_help="Cancel a MapTask (its running pods are deleted).")
@click.argument("name")
@NAMESPACE
def cancel_cmd(name: str, namespace: str | None) -> None:
    """Set spec.suspend on MapTask NAME: the operator deletes its pods and marks it Cancelled."""
    cluster = _connect(namespace)
    _task(cluster, name)
    cluster.suspend(name)
    click.echo(f"maptask {name} cancelled")


@click.command("results", short_help="Print a function-mode MapTask's results as JSON lines.")
@click.argument("name")
@NAMESPACE
@click.option("--store", default=None, help="Store prefix (default: the MapTask's spec.store.url).")
def results_cmd(name: str, namespace: str | None, store: str | None) -> None:
    """One JSON line per index, in order (null where an index has no result); failures and
    their tracebacks go to stderr and make the exit code 1."""
    from kubemap.api import MapRun

    if store is None:
        cluster = _connect(namespace)
        body = _task(cluster, name)
        store = ((body.get("spec") or {}).get("store") or {}).get("url")
        if not store:
            _fail(
                f"MapTask {name} has no spec.store (container mode keeps no results); pass --store"
            )
    run = MapRun.attach(name, store=store)
    values = run.results(partial=True)
    for value in values:
        try:
            click.echo(json.dumps(value))
        except TypeError:
            click.echo(json.dumps(repr(value)))
    failures = run.failures()
    for idx, failure in failures.items():
        click.echo(
            f"--- index {idx}: {failure.type}: {failure.message}\n{failure.traceback.rstrip()}",
            err=True,
        )
    if failures:
        sys.exit(1)


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
    for command in (get_cmd, list_cmd, logs_cmd, cancel_cmd, results_cmd, crd_cmd):
        group.add_command(_guard(command))
