"""`kubemap logs`: what a task's workers printed. Each item's (function mode) or pod's
(container mode) output is kept, bounded, in the task's store (kubemap.task.output), so it is
read after the pods are gone, for a local task too; a live pod's log is read from the cluster;
the operator's copy of deleted failed pods' log tails and exit codes fills in what the store
does not hold; and where the cluster serves no logs, what each finished pod said when it ended."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from kubemap.cli.exits import exit_with_error
from kubemap.cli.where import Where, backend_option, locate, namespace_option, store_option
from kubemap.contract import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_COUNT,
    LABEL_INDEX,
    LABEL_TASK,
    task_label,
)
from kubemap.errors import ClusterError, StoreError
from kubemap.pages.timeline import seconds_text
from kubemap.stores import Store, open_store
from kubemap.task import output as keptoutput
from kubemap.task.meta import read_total

if TYPE_CHECKING:
    from kubemap.backends.kubernetes.client import Cluster


@click.command("logs", short_help="Print what a task's workers printed, per index.")
@click.argument("name")
@click.option(
    "--index",
    "index",
    type=int,
    default=None,
    help="Only this index: its kept output, or the latest pod that ran it while it lives.",
)
@namespace_option
@backend_option("the task is")
@store_option
def logs_cmd(
    name: str, index: int | None, namespace: str | None, backend: str | None, store: str | None
) -> None:
    """What the workers of task NAME printed (stdout and stderr, interleaved), per index:
    kept in the task's store, bounded (the first 16 KiB and the last 48 KiB of each index),
    for succeeded and failed indices alike, after their pods are gone and for tasks run on
    this machine. A MapTask's live pods are read from the cluster. A container task's pods
    keep their output when their image holds kubemap (see the guide). Nothing is kept with
    KUBEMAP_KEEP_OUTPUT=0 in the workers' environment."""
    found = locate(name, backend=backend, store=store, namespace=namespace)
    if found.local or found.cluster is None:
        _local_logs(found, index)
        return
    cluster = found.cluster
    _check_range(name, index, _cluster_total(found.body))
    pods = cluster.call(
        "list pods",
        cluster.core.list_namespaced_pod,
        cluster.namespace,
        label_selector=f"{LABEL_TASK}={task_label(name)}",
    ).items
    chosen = []
    by_name = {pod.metadata.name: pod for pod in pods}
    for pod in pods:
        meta = pod.metadata
        start = int((meta.labels or {}).get(LABEL_INDEX, 0))
        count = int((meta.annotations or {}).get(ANNOTATION_COUNT, 1))
        attempt = int((meta.annotations or {}).get(ANNOTATION_ATTEMPT, 0))
        if index is None or start <= index < start + count:
            chosen.append((start, attempt, meta.name))
    if index is not None:
        chosen = sorted(chosen, key=lambda c: c[1])[-1:]
    task = _cluster_task(cluster, name, found.body, store) if not chosen else None
    if not chosen and task is not None and _print_kept_output(task, index):
        return
    if not chosen and _print_kept_logs(cluster, name, index):
        return
    if not chosen:
        where = f"index {index}" if index is not None else "this task"
        exit_with_error(
            f"no output of {where} is kept and no pod of it is left: "
            + _why_nothing(found.body, task)
        )
    unreadable = []
    for start, attempt, pod_name in sorted(chosen):
        click.echo(f"==> {pod_name} (index {start}, attempt {attempt}) <==")
        try:
            text = cluster.pod_log(pod_name)
        except ClusterError as exc:  # a pod that never started has no logs: say so, go on
            click.echo(f"error: {exc}", err=True)
            task = task or _cluster_task(cluster, name, found.body, store)
            if task is not None and _print_kept_output(task, index if index is not None else start):
                continue  # what the pod printed, from the store, once it finished
            unreadable.append(pod_name)
            _print_termination(by_name[pod_name])
            continue
        click.echo(text, nl=not text.endswith("\n"))
    if unreadable:
        exit_with_error(
            f"could not read the logs of {len(unreadable)} of {len(chosen)} pod(s): check "
            f"`kubectl logs {unreadable[0]} -n {cluster.namespace}` (RBAC on pods/log, or the "
            "pod never started)"
        )


def _print_termination(pod: Any) -> None:
    """What a finished pod said when its logs cannot be read: its exit code and termination
    message (the log's tail for containers, kept by FallbackToLogsOnError)."""
    for status in pod.status.container_statuses or []:
        done = status.state.terminated if status.state else None
        if done is not None:
            click.echo(f"(logs unreadable; {status.name} exited with code {done.exit_code}, "
                       "its termination message:)")  # fmt: skip
            message = done.message or "(empty)\n"
            click.echo(message, nl=not message.endswith("\n"))


def _print_kept_logs(cluster: Cluster, name: str, index: int | None) -> bool:
    """The operator's copy of deleted failed pods' logs (ConfigMap <task>-logs); False when
    it holds nothing for `index` (None: for any index)."""
    from kubernetes.client.exceptions import ApiException

    try:
        found = cluster.call(
            "read kept logs",
            cluster.core.read_namespaced_config_map,
            f"{task_label(name)}-logs",
            cluster.namespace,
        )
    except ApiException:
        return False
    data = dict(found.data or {})
    order = [i for i in data.get("order", "").split(",") if i in data]
    wanted = order if index is None else [i for i in order if i == str(index)]
    for key in wanted:
        click.echo(f"==> index {key}: kept after its pod was deleted <==")
        click.echo(data[key], nl=not data[key].endswith("\n"))
    return bool(wanted)


# -- the output kept in the task's store ---------------------------------------------------
def _local_logs(found: Where, index: int | None) -> None:
    assert found.store is not None
    task = open_store(found.store).child(found.name)
    try:
        total: int | None = read_total(task)
    except Exception:  # no task.json (an old task): no range to check
        total = None
    _check_range(found.name, index, total)
    if not _print_kept_output(task, index):
        where = f"index {index}" if index is not None else "any index"
        exit_with_error(
            f"no output of {where} of task {found.name} is kept: it printed nothing, has not "
            f"run yet, or ran with {keptoutput.ENV_KEEP_OUTPUT}=0; its failures with their "
            f"tracebacks: `kubemap results {found.name}{found.flags()} --verbose`"
        )


def _check_range(name: str, index: int | None, total: int | None) -> None:
    if index is None or total is None or 0 <= index < total:
        return
    span = f"indices 0..{total - 1}" if total else "no indices"
    exit_with_error(f"index {index} is out of range: task {name} has {span}")


def _print_kept_output(task: Store, index: int | None) -> bool:
    """Print the kept output of `index` (None: of every index), each run with a header;
    False when none is kept."""
    try:
        if index is not None:
            runs = keptoutput.read_output(task, index)
        else:
            runs = [run for run in _every_run(task)]
    except StoreError as exc:
        click.echo(f"error: cannot read the kept output in {task.url}: {exc}", err=True)
        return False
    for run in runs:
        took = f", ran {seconds_text(run.seconds)}" if run.seconds is not None else ""
        cut = f", {run.cut} bytes cut" if run.cut else ""
        click.echo(f"==> index {run.index} (attempt {run.attempt}, {run.worker}{took}{cut}) <==")
        text = run.text.decode(errors="replace") or (
            f"({run.cut} bytes printed, not kept: its slice had kept all it may)\n"
        )
        click.echo(text, nl=not text.endswith("\n"))
    return bool(runs)


def _every_run(task: Store) -> list[keptoutput.KeptOutput]:
    runs = []
    for key in keptoutput.output_keys(task):
        output = keptoutput.SliceOutput.decode(task.get(key))
        if output is None:
            continue
        for item in output.items:
            runs.append(
                keptoutput.KeptOutput(
                    item.index,
                    output.attempt,
                    output.worker,
                    output.text_of(item),
                    item.cut,
                    item.seconds,
                )
            )
    return sorted(runs, key=lambda r: (r.index, r.attempt))


def _cluster_total(body: dict[str, Any] | None) -> int | None:
    body = body or {}
    total = (body.get("status") or {}).get("total") or (body.get("spec") or {}).get("count")
    return int(total) if total else None


def _cluster_task(
    cluster: Cluster, name: str, body: dict[str, Any] | None, store: str | None
) -> Store | None:
    """The MapTask's prefix in its store: --store, its spec.store, else the chart's default
    store; None when none is known."""
    from kubemap.backends.kubernetes.discovery import chart_store, find_defaults

    url = store or (((body or {}).get("spec") or {}).get("store") or {}).get("url")
    if url:
        return open_store(url).child(name)
    try:
        defaults = find_defaults(cluster)
    except Exception:
        return None
    if defaults is None or not defaults.store:
        return None
    return chart_store(defaults).open().child(name)


def _why_nothing(body: dict[str, Any] | None, task: Store | None) -> str:
    spec = (body or {}).get("spec") or {}
    if task is None:
        return "the task's store is unknown (pass --store)"
    reasons = f"it printed nothing, has not run yet, or ran with {keptoutput.ENV_KEEP_OUTPUT}=0"
    if spec.get("mode") == "Container":
        reasons += (
            f"; a container task keeps its pods' output only when its image holds kubemap "
            f"(the worker image, or pods annotated {keptoutput.ANNOTATION_KEEP_OUTPUT}: "
            '"true")'
        )
    return reasons
