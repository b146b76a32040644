"""`kubemap timeline NAME`: where a task's time went, from the timing records every slice
run leaves in the task's store (kubemap.task.timings), for local and cluster tasks alike.

Without options it writes NAME-timeline.html, a page that opens without a network; --png
draws the same with matplotlib; --summary prints items/s, the p50/p95 item time and the
slowest worker instead of drawing.
"""

from __future__ import annotations

import click

from kubemap.cli.exits import exit_with_error, one_line_errors
from kubemap.cli.where import KUBERNETES, backend_option, locate, namespace_option, store_option
from kubemap.pages.timeline import render_html, render_png, summary_lines
from kubemap.stores import Store, open_store
from kubemap.task.timings import ENV_TIMINGS, read_timings, summarize


@click.command("timeline", short_help="Draw where a task's time went (HTML or PNG).")
@click.argument("name")
@store_option
@backend_option("the task is")
@namespace_option
@click.option(
    "-o",
    "--output",
    "output",
    metavar="FILE",
    default=None,
    help="Where to write the picture [default: NAME-timeline.html, or .png with --png].",
)
@click.option("--png", is_flag=True, help="Draw a PNG with matplotlib instead of an HTML page.")
@click.option(
    "--summary",
    is_flag=True,
    help="Print items/s, p50/p95 item time and the slowest worker; draw nothing.",
)
def timeline_cmd(
    name: str,
    store: str | None,
    backend: str | None,
    namespace: str | None,
    output: str | None,
    png: bool,
    summary: bool,
) -> None:
    """Draw task NAME's slices on a workers x time chart, with items/s over time and where
    the time went (pod start, fetch, compute, write): a self-contained HTML page (no network
    needed to open it), or a PNG with --png. Every slice is one bar, coloured by outcome;
    retries have a dashed outline, stragglers (over 2x the median time per item, and 0.1 s
    late) a thick one. The records come from the task's store, so a task run on this
    machine and a MapTask on a cluster are drawn alike."""
    task = _task_store(name, store=store, backend=backend, namespace=namespace)
    timings = read_timings(task)
    if not timings:
        exit_with_error(
            f"task {name} has no timing records in {task.url}: it has not run a slice yet, ran "
            f"with {ENV_TIMINGS}=0, or ran on a kubemap that did not record them"
        )
    if summary:
        for line in summary_lines(summarize(timings)):
            click.echo(line)
        return
    path = output or f"{name}-timeline.{'png' if png else 'html'}"
    if png:
        render_png(name, timings, path)
    else:
        with open(path, "w", encoding="utf-8") as out:
            out.write(render_html(name, timings))
    click.echo(f"wrote {path} ({len(timings)} slice runs)")


def _task_store(
    name: str, *, store: str | None, backend: str | None, namespace: str | None
) -> Store:
    found = locate(name, backend=backend, store=store, namespace=namespace)
    if found.local:
        assert found.store is not None
        return open_store(found.store).child(name)
    from kubemap.api.maprun import MapRun

    ns = found.cluster.namespace if found.cluster else namespace
    return MapRun.attach(name, backend=KUBERNETES, namespace=ns).task_store  # its own store


def register(group: click.Group) -> None:
    group.add_command(one_line_errors(timeline_cmd))
