"""`kubemap pool create|list|scale|delete|crd`: warm worker pools from the command line."""

from __future__ import annotations

from pathlib import Path

import click

from kubemap.cli.exits import one_line_errors
from kubemap.resources.crds import render_pool_crd

CRD_FILE = Path(__file__).resolve().parents[3] / "crds" / "workerpool.yaml"


@click.group("pool", short_help="Create, list, scale and delete warm worker pools.")
def pool_group() -> None:
    """Warm worker pools (WorkerPool resources): MapTasks with --pool / pool= lease work to
    their workers instead of starting pods."""


@pool_group.command("create")
@click.argument("name")
@click.option(
    "--replicas", type=int, default=4, show_default=True, help="Workers while there is work."
)
@click.option(
    "--min", "min_replicas", type=int, default=0, show_default=True, help="Workers kept when idle."
)
@click.option(
    "--idle-ttl",
    type=int,
    default=300,
    show_default=True,
    help="Seconds idle before scaling to --min; 0 = never.",
)
@click.option("--image", default=None, help="Worker image (default: the operator's kubemap image).")
@click.option(
    "--package",
    "packages",
    multiple=True,
    help="A pip requirement every worker installs once (repeat for more), e.g. 'pandas==2.2.*'.",
)
@click.option(
    "--queue",
    default=None,
    help="Kueue LocalQueue that admits the workers, each by its resource requests.",
)
@click.option("--namespace", "-n", default=None, help="Namespace (default: the context's).")
def create_cmd(
    name: str,
    replicas: int,
    min_replicas: int,
    idle_ttl: int,
    image: str | None,
    packages: tuple[str, ...],
    queue: str | None,
    namespace: str | None,
) -> None:
    """Create the WorkerPool NAME: warm workers that run the MapTasks submitted with
    --pool NAME (pool=NAME in Python) without starting a pod per slice."""
    from kubemap.api.workerpool import WorkerPool

    pool = WorkerPool(
        name, namespace=namespace, replicas=replicas, min_replicas=min_replicas,
        idle_ttl_seconds=idle_ttl, image=image, packages=list(packages) or None, queue=queue,
    ).create()  # fmt: skip
    where = f", queue {queue}" if queue else ""
    click.echo(
        f"workerpool {pool.name} created in {pool.cluster.namespace} ({replicas} workers{where})"
    )


@pool_group.command("list")
@click.option("--namespace", "-n", default=None, help="Namespace (default: the context's).")
def list_cmd(namespace: str | None) -> None:
    """Every WorkerPool in the namespace: its workers (ready, busy, idle; in a Kueue queue,
    admitted and waiting for quota), the tasks they served and their Python."""
    from kubemap.backends.kubernetes.client import Cluster
    from kubemap.backends.kubernetes.workerpools import list_pools
    from kubemap.resources.workerpool import WorkerPoolStatus

    rows = [("NAME", "REPLICAS", "READY", "BUSY", "IDLE", "ADMITTED", "WAITING", "TASKS", "PYTHON")]
    for body in list_pools(Cluster.connect(namespace, alternative=None)):
        st = WorkerPoolStatus.model_validate(body.get("status") or {})
        queued = [str(n) if n is not None else "-" for n in (st.admitted, st.waiting)]
        rows.append(
            (body["metadata"]["name"], str(st.replicas), str(st.ready), str(st.busy),
             str(st.idle), *queued, str(st.tasks_served), st.python_version or "-")
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@pool_group.command("scale")
@click.argument("name")
@click.argument("replicas", type=click.IntRange(0, 1000))
@click.option("--namespace", "-n", default=None, help="Namespace (default: the context's).")
def scale_cmd(name: str, replicas: int, namespace: str | None) -> None:
    """Set the number of workers WorkerPool NAME runs while it has work (0 stops them)."""
    from kubemap.api.workerpool import WorkerPool

    WorkerPool(name, namespace=namespace).scale(replicas)
    click.echo(f"workerpool {name} scaled to {replicas} workers")


@pool_group.command("delete")
@click.argument("name")
@click.option("--namespace", "-n", default=None, help="Namespace (default: the context's).")
def delete_cmd(name: str, namespace: str | None) -> None:
    """Delete WorkerPool NAME and its workers; tasks that name it can no longer run."""
    from kubemap.api.workerpool import WorkerPool

    pool = WorkerPool(name, namespace=namespace)
    pool.delete()  # a pool that does not exist: an error naming the namespace (exit 1)
    click.echo(f"workerpool {name} deleted from {pool.cluster.namespace}")


@pool_group.command("crd")
@click.option(
    "--check", is_flag=True, help="Compare with crds/workerpool.yaml; exit 1 if it differs."
)
def crd_cmd(check: bool) -> None:
    """Print the WorkerPool CRD generated from the models."""
    text = render_pool_crd()
    if not check:
        click.echo(text, nl=False)
        return
    if not CRD_FILE.is_file() or CRD_FILE.read_text() != text:
        raise click.ClickException(
            f"{CRD_FILE} differs from the models: run `kubemap pool crd > crds/workerpool.yaml`"
        )
    click.echo(f"{CRD_FILE} is up to date")


def register(group: click.Group) -> None:
    for command in pool_group.commands.values():
        one_line_errors(command)
    group.add_command(pool_group)
