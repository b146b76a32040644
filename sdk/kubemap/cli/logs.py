"""`kubemap logs`: the logs of a MapTask's pods, the operator's copy of deleted failed pods'
logs, and, where the cluster serves no logs, what each finished pod said when it ended."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from kubemap.cli.exits import exit_with_error
from kubemap.cli.where import backend_option, locate, namespace_option, store_option
from kubemap.contract import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_COUNT,
    LABEL_INDEX,
    LABEL_TASK,
    task_label,
)
from kubemap.errors import ClusterError

if TYPE_CHECKING:
    from kubemap.backends.kubernetes.client import Cluster


@click.command("logs", short_help="Print the logs of a MapTask's pods.")
@click.argument("name")
@click.option(
    "--index", "index", type=int, default=None, help="Only the latest pod that ran this index."
)
@namespace_option
@backend_option("the task is")
@store_option
def logs_cmd(
    name: str, index: int | None, namespace: str | None, backend: str | None, store: str | None
) -> None:
    """Logs of the pods of MapTask NAME that still exist (running, and failed ones kept for
    their logs; succeeded pods are removed once recorded). A task run on this machine has
    no pods: its output went to the terminal that ran it."""
    found = locate(name, backend=backend, store=store, namespace=namespace)
    if found.local or found.cluster is None:
        flags = found.flags()
        exit_with_error(
            f"task {name} ran on this machine: it has no pods, and its functions' output went "
            f"to the terminal that ran it; its failures with their tracebacks: `kubemap "
            f"results {name}{flags} --verbose`"
        )
    cluster = found.cluster
    assert cluster is not None  # exit_with_error exited otherwise
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
    if not chosen and _print_kept_logs(cluster, name, index):
        return
    if not chosen:
        where = f"index {index}" if index is not None else "this task"
        exit_with_error(
            f"no pod of {where} exists any more (succeeded pods are removed); "
            f"for function-mode failures see `kubemap results {name}`"
        )
    unreadable = []
    for start, attempt, pod_name in sorted(chosen):
        click.echo(f"==> {pod_name} (index {start}, attempt {attempt}) <==")
        try:
            text = cluster.pod_log(pod_name)
        except ClusterError as exc:  # a pod that never started has no logs: say so, go on
            click.echo(f"error: {exc}", err=True)
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
