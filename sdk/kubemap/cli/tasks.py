"""The task commands of the `kubemap` CLI: get, list, logs, cancel, results; and crd.

They work on tasks run on this machine (found in the local store, see kubemap.cli.where)
and on the MapTasks of the current kubeconfig context (namespace: -n, else the context's
namespace, else "default"). cli.py adds them to its group through `register`.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kubemap.cli.exits import exit_with_error, one_line_errors
from kubemap.cli.logs import logs_cmd
from kubemap.cli.outcome import outcome, print_outcome, why
from kubemap.cli.where import (
    KUBERNETES,
    LOCAL,
    NoCluster,
    Where,
    age,
    attach,
    backend_option,
    connect,
    local_tasks,
    locate,
    namespace_option,
    store_option,
)
from kubemap.contract import (
    LABEL_TASK,
    task_label,
)
from kubemap.errors import ConfigError, StoreError
from kubemap.pages.timeline import seconds_text
from kubemap.resources.crds import render_crd
from kubemap.resources.maptask import MapTaskStatus
from kubemap.stores import Store, open_store
from kubemap.task.timings import read_timings, summarize, timing_keys

if TYPE_CHECKING:
    from kubemap.backends.kubernetes.client import Cluster


CRD_FILE = Path(__file__).resolve().parents[3] / "crds" / "maptask.yaml"


@click.command("get", short_help="Show one task's progress (local or a MapTask).")
@click.argument("name")
@namespace_option
@backend_option("the task is")
@store_option
def get_cmd(name: str, namespace: str | None, backend: str | None, store: str | None) -> None:
    """Phase, counts and index ranges of task NAME: one run on this machine (in the local
    store) or the MapTask NAME."""
    where = locate(name, backend=backend, store=store, namespace=namespace)
    if where.local:
        _get_local(where)
        return
    assert where.cluster is not None and where.body is not None
    cluster, body = where.cluster, where.body
    status = MapTaskStatus.model_validate(body.get("status") or {})
    spec = body.get("spec") or {}
    click.echo(f"name:        {name}\nwhere:       kubernetes")
    click.echo(f"namespace:   {cluster.namespace}\nmode:        {spec.get('mode')}")
    click.echo(f"phase:       {status.phase.value}")
    click.echo(
        f"progress:    {status.succeeded}/{status.total} succeeded, {status.failed} failed, "
        f"{status.not_run} not run, {status.active} pods active"
    )
    if spec.get("files"):  # a files task: its items are the objects its listing found
        click.echo(
            "files:       not listed yet"
            if status.listed is None
            else f"files:       {status.listed} listed, {status.skipped or 0} skipped "
            "(processed before), the rest are the inputs"
        )
    if spec.get("queueName"):
        click.echo(f"queue:       {spec['queueName']} (Kueue)")
    if status.queued and not status.phase.finished:
        # Kueue holds these pods back until the queue's quota has room: waiting, not stuck.
        click.echo(f"queued:      {status.queued} pods waiting for quota")
    if status.retries:
        click.echo(f"retries:     {status.retries} spent")
    if status.preempted:
        click.echo(f"preempted:   {status.preempted} pods rerun (no retry spent)")
    if status.timing is not None:  # from the workers' timing records (`kubemap timeline`)
        click.echo(f"timing:      {status.timing.describe()}")
    if status.speculated:  # backup copies of stragglers (spec.speculation)
        click.echo(
            f"speculated:  {status.speculated} backup copies, {status.speculation_won} won, "
            f"{status.speculation_wasted} wasted"
        )
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
        # The status already says p50/p95 (its `timing:` line): the store adds the slowest.
        _echo_times(spec["store"]["url"], name, summary=status.timing is None)


def _get_local(where: Where) -> None:
    """`kubemap get` of a task run on this machine: what its run recorded in the store."""
    from kubemap.core.ranges import IndexRanges

    run = attach(where)
    result = outcome(run)
    status = result.status
    click.echo(f"name:        {where.name}\nwhere:       local")
    click.echo(f"phase:       {status.phase.value}")
    running = f", {status.active} running" if status.active else ""
    click.echo(
        f"progress:    {result.succeeded}/{status.total} succeeded, {len(result.failures)} "
        f"failed, {result.not_run} not run{running}"
    )
    if status.reason is not None and status.finished:
        click.echo(f"reason:      {status.reason.value}")
    if result.failures:
        click.echo(f"failed:      {_short(str(IndexRanges.of(result.failures)))}")
    if why(status):
        click.echo(f"message:     {why(status)}")
    click.echo(f"store:       {run.store_url}")
    _echo_times(run.task_store, where.name)


SLOWEST_SHOWN = 5
TIMINGS_READ_AT_MOST = 5000  # records `get` reads; past that, `kubemap timeline --summary`


def time_lines(task: Store, name: str) -> list[str]:
    """The per-item times from the task's timing records (task.timings): p50/p95 and the
    slowest indices with their times (each slice records its slowest item, so these are the
    slowest of the slices' slowest). Nothing when there are no records or the store cannot
    be read."""
    try:
        keys = timing_keys(task)
        if len(keys) > TIMINGS_READ_AT_MOST:
            return [f"item time:   `kubemap timeline {name} --summary` ({len(keys)} slice runs)"]
        records = read_timings(task) if keys else []
    except StoreError:  # the counts above stand without the times
        return []
    if not records:
        return []
    summary = summarize(records)
    lines = [
        f"item time:   p50 {seconds_text(summary.p50)}, p95 {seconds_text(summary.p95)}"
        + (f", {summary.items_per_second:,.1f} items/s" if summary.items_per_second else "")
    ]
    slowest: dict[int, float] = {}
    for record in records:
        if record.slowest is not None:
            index, seconds = record.slowest
            slowest[index] = max(seconds, slowest.get(index, 0.0))
    top = sorted(slowest.items(), key=lambda found: -found[1])[:SLOWEST_SHOWN]
    if top:
        lines.append("slowest:     " + ", ".join(f"index {i} {seconds_text(t)}" for i, t in top))
    return lines


def _echo_times(task: Store | str, name: str, summary: bool = True) -> None:
    try:
        store = open_store(task).child(name) if isinstance(task, str) else task
    except (StoreError, ConfigError):  # a store this machine cannot reach: no times
        return
    for line in time_lines(store, name):
        if summary or not line.startswith("item time:"):
            click.echo(line)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@click.command("list", short_help="List tasks: this machine's and the cluster's MapTasks.")
@namespace_option
@backend_option("to list")
@store_option
@click.option(
    "-o",
    "--output",
    type=click.Choice(["wide"]),
    default=None,
    help="wide: also the pods that exist, the retries spent and the store.",
)
def list_cmd(
    namespace: str | None, backend: str | None, store: str | None, output: str | None
) -> None:
    """Every task with its phase and counts: those run on this machine (in the local store)
    and the MapTasks of the namespace; WHERE says which. Without a cluster configured, only
    this machine's (and a note says so)."""
    wide = output == "wide"
    header = ("NAME", "WHERE", "MODE", "PHASE", "SUCCEEDED", "FAILED", "NOT-RUN", "ACTIVE")
    rows: list[tuple[str, ...]] = [
        (*header, "PODS", "RETRIES", "AGE", "STORE") if wide else (*header, "AGE")
    ]
    now = datetime.now(UTC)
    if backend != KUBERNETES and not (backend is None and namespace is not None):
        for task in local_tasks(store):
            result = outcome(task.run)
            row: tuple[str, ...] = (
                task.name,
                LOCAL,
                "Function",
                result.status.phase.value,
                f"{result.succeeded}/{result.status.total}",
                str(len(result.failures)),
                str(result.not_run),
                str(result.status.active),
            )
            when = age(task.created, now)
            retries = str(result.status.retries)
            rows.append((*row, "-", retries, when, task.run.store_url) if wide else (*row, when))
    if backend != LOCAL:
        try:
            cluster = connect(namespace)
        except NoCluster:
            if backend == KUBERNETES:
                raise
            click.echo("(no cluster configured: these are this machine's tasks only)", err=True)
        else:
            rows.extend(_cluster_rows(cluster, wide, now))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _cluster_rows(cluster: Cluster, wide: bool, now: datetime) -> list[tuple[str, ...]]:
    rows = []
    tasks = cluster.list()
    pods = _pods_per_task(cluster) if wide and tasks else {}
    for item in tasks:
        st = MapTaskStatus.model_validate(item.get("status") or {})
        spec = item.get("spec") or {}
        name = item["metadata"]["name"]
        total = st.total or spec.get("count") or len(spec.get("items") or [])
        created = _created(item["metadata"].get("creationTimestamp"))
        row: tuple[str, ...] = (
            name,
            KUBERNETES,
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
                age(created, now),
                f"{store.rstrip('/')}/{name}" if store else "-",
            )
        else:
            row = (*row, age(created, now))
        rows.append(row)
    return rows


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


def _created(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


@click.command("cancel", short_help="Cancel a task (a MapTask's running pods are deleted).")
@click.argument("name")
@namespace_option
@backend_option("the task is")
@store_option
def cancel_cmd(name: str, namespace: str | None, backend: str | None, store: str | None) -> None:
    """Cancel task NAME. A MapTask: set spec.suspend, the operator deletes its pods and marks
    it Cancelled. A task running on this machine is stopped by the process that runs it
    (Ctrl-C there). A task that has finished already is left as it is."""
    where = locate(name, backend=backend, store=store, namespace=namespace)
    if where.local:
        _cancel_local(where)
        return
    assert where.cluster is not None and where.body is not None
    phase = MapTaskStatus.model_validate(where.body.get("status") or {}).phase
    if phase.finished:
        click.echo(f"maptask {name} already {phase.value}: nothing to cancel, nothing changed")
        return
    where.cluster.suspend(name)
    pool = (where.body.get("spec") or {}).get("pool")  # a pool task has leases, not pods
    done = f"its leases on pool {pool} are taken back" if pool else "its pods are being deleted"
    click.echo(f"maptask {name} cancelled: {done}")


def _cancel_local(where: Where) -> None:
    from kubemap.contract import STATUS_KEY
    from kubemap.stores import open_store

    status = attach(where).status()
    if status.finished:
        click.echo(
            f"task {where.name} already {status.phase.value}: nothing to cancel, nothing changed"
        )
        return
    raw = open_store(str(where.store)).child(where.name).get(STATUS_KEY)
    runner = json.loads(raw).get("runner") or {}
    exit_with_error(
        f"task {where.name} runs on this machine in process {runner.get('pid', '?')} on "
        f"{runner.get('host', '?')}, which alone can stop it: press Ctrl-C there (or "
        f"`kill -INT {runner.get('pid', 'PID')}`); its finished results stay in the store"
    )


@click.command("results", short_help="Print a task's results as JSON lines (local or MapTask).")
@click.argument("name")
@namespace_option
@backend_option("the task is")
@store_option
@click.option(
    "--partial",
    is_flag=True,
    help="Print the results of a cancelled or timed-out task too (null where none).",
)
@click.option("--verbose", "-v", is_flag=True, help="Print the remote tracebacks of failures.")
def results_cmd(
    name: str,
    namespace: str | None,
    backend: str | None,
    store: str | None,
    partial: bool,
    verbose: bool,
) -> None:
    """One JSON line per index of task NAME, in order (null where an index has no result);
    the task is one run on this machine or a function-mode MapTask. Failures go to stderr,
    one line each (--verbose: with tracebacks). A cancelled or timed-out task's results need
    --partial. Exit status: 0 when the task succeeded (failures tolerated by its
    min_success_ratio are warnings) or, with --partial, when none of its indices failed;
    1 otherwise."""
    where = locate(name, backend=backend, store=store, namespace=namespace)
    if not where.local:
        assert where.body is not None
        status = MapTaskStatus.model_validate(where.body.get("status") or {})
        if (where.body.get("spec") or {}).get("mode") == "Container":
            _container_has_no_results(name, status)
    run = attach(where)
    result = outcome(run, run.wait())
    if result.stopped and not partial:
        print_outcome(name, result, verbose=verbose, flags=where.flags(), printed=None)
        sys.exit(1)
    for value in run.results(partial=True):
        try:
            click.echo(json.dumps(value))
        except (TypeError, ValueError):
            click.echo(json.dumps(repr(value)))
    accepted = result.ok or (partial and result.stopped is not None and not result.failures)
    severity = "warning" if accepted else "error"
    print_outcome(
        name, result, verbose=verbose, flags=where.flags(), printed="results", severity=severity
    )
    if verbose:  # where the time went, per index: after the outcome, on stderr
        for line in time_lines(run.task_store, name):
            click.echo(line, err=True)
    if not accepted:
        sys.exit(1)


def _container_has_no_results(name: str, status: MapTaskStatus) -> None:
    """Container tasks write no results kubemap could read: say what there is instead."""
    failed = f" (failed: {_short(status.failed_indexes)})" if status.failed_indexes else ""
    exit_with_error(
        f"MapTask {name} runs a container (mode Container): kubemap keeps no results for it, "
        f"only its status, {status.phase.value}: {status.succeeded} of {status.total} indices "
        f"succeeded, {status.failed} failed{failed}. What its pods printed: "
        f"`kubemap logs {name} --index I` (kept per index in its store after the pods are "
        "gone when its image holds kubemap; failed indices' log tails in any case)"
    )


@click.command("crd", short_help="Print the MapTask CRD generated from the models.")
@click.option(
    "--check", is_flag=True, help=f"Compare with {CRD_FILE.name} instead; exit 1 if they differ."
)
def crd_cmd(check: bool) -> None:
    """Print the MapTask CustomResourceDefinition that `kubectl apply -f -` installs (the
    Helm chart installs it too); --check compares it with the checkout's crds/maptask.yaml."""
    text = render_crd()
    if not check:
        click.echo(text, nl=False)
        return
    if not CRD_FILE.is_file():
        exit_with_error(f"{CRD_FILE} not found: run from a kubemap checkout")
    if CRD_FILE.read_text() != text:
        exit_with_error(
            f"{CRD_FILE} differs from the models: regenerate it with `kubemap crd > crds/maptask.yaml`"
        )
    click.echo(f"{CRD_FILE} is up to date")


def register(group: click.Group) -> None:
    for command in (get_cmd, list_cmd, logs_cmd, cancel_cmd, results_cmd, crd_cmd):
        group.add_command(one_line_errors(command))
