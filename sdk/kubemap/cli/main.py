"""The `kubemap` command line. `kubemap run` maps a function from a module or file over the
items of a file; the cluster commands (get, list, logs, cancel, results, crd) live in
kubemap.cli.tasks and are added to this group when that module is installed."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import click

from kubemap.cli.outcome import in_cli_words, outcome, print_outcome
from kubemap.cli.userfunction import load_function
from kubemap.cli.where import backend_option
from kubemap.errors import ConfigError, KubemapError, MapTaskError
from kubemap.task import retention

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="kubemap", prog_name="kubemap")
def main() -> None:
    """Map a Python function over a list of inputs: on this machine (the default, no
    cluster needed) or on Kubernetes, one pod per input or chunk.

    \b
    Examples:
      kubemap run examples/square.py:square --inputs numbers.jsonl
      seq 1 100 | kubemap run mypkg.tasks:score --inputs - --parallelism 4
      kubemap run tasks:fetch --inputs urls.txt --format lines --retries 2 --output out.jsonl
      kubemap run tasks:fetch --inputs urls.txt --backend kubernetes \\
          --store s3://my-bucket/kubemap --image registry.example/me/tasks:1

    In Python: kubemap.map(fn, inputs, parallelism=8) does the same.

    \b
    Which commands need a cluster (a kubeconfig):
      pool, logs                          always
      run, retry, results, get, list,     only for MapTasks (--backend kubernetes);
      cancel                              a task run on this machine needs none
      gc, crd                             never
    """


@main.command(context_settings=CONTEXT, short_help="Map a function over the items of a file.")
@click.argument("target", metavar="MODULE:FUNCTION")
@click.option(
    "--inputs",
    "-i",
    "inputs_path",
    required=True,
    metavar="FILE",
    help="Inputs: JSON lines, a JSON array, or one item per text line; '-' reads stdin.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "json", "lines"]),
    default="auto",
    show_default=True,
    help="Input format; auto detects it from the first non-blank line. lines: every line is "
    'one text item, blank lines too (as ""), so result N is line N\'s; jsonl: one JSON value '
    "per line, blank lines skipped.",
)
@click.option(
    "--output",
    "-o",
    "output_path",
    metavar="FILE",
    default="-",
    help="Where results go, as JSON lines in input order (default: stdout).",
)
@click.option("--parallelism", "-p", type=int, help="Workers (pods) at once [default: CPUs].")
@click.option("--items-per-pod", type=int, help="Inputs per worker slice [default: automatic].")
@click.option("--retries", type=int, default=0, show_default=True, help="Retries per input.")
@click.option(
    "--min-success-ratio",
    type=float,
    default=1.0,
    show_default=True,
    help="Succeed if at least this share of inputs succeeds.",
)
@click.option("--timeout", type=float, help="Stop the run after this many seconds.")
@click.option(
    "--backend",
    type=click.Choice(["local", "kubernetes"]),
    default="local",
    show_default=True,
    help="Where to run.",
)
@click.option(
    "--store",
    metavar="URL",
    help="s3://bucket/prefix or a directory [default: $KUBEMAP_STORE or ~/.cache/kubemap/store].",
)
@click.option("--name", help="Task name (DNS-1123) [default: <function>-<random>].")
@click.option("--image", help="Kubernetes: worker image.")
@click.option("--namespace", help="Kubernetes: namespace of the MapTask.")
@click.option("--pool", help="Kubernetes: run on this WorkerPool's warm workers (made if missing).")
@click.option(
    "--speculation/--no-speculation",
    default=None,
    help="Kubernetes: backup copies of straggling slices [default: on]; a speculated item's "
    "side effects may happen twice.",
)
@click.option(
    "--queue",
    help="Kubernetes: the Kueue LocalQueue that admits the pods (`kubectl get localqueues`).",
)
@click.option("--priority", help="Kubernetes: the pods' PriorityClass (Kueue preempts lower).")
@click.option(
    "--env",
    "env",
    multiple=True,
    metavar="KEY=VALUE",
    callback=lambda _ctx, _param, value: _parse_env(value),
    help="Kubernetes: an environment variable of the workers; repeat for more.",
)
@click.option(
    "--resources",
    metavar="SPEC",
    callback=lambda _ctx, _param, value: _parse_resources(value),
    help="Kubernetes: the workers' requests, cpu=1,memory=2Gi, or a JSON resources object "
    '(\'{"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}}\').',
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar [default: on a terminal]."
)
@click.option(
    "--detach",
    is_flag=True,
    help="Kubernetes: submit, print the task's name and return; the task runs on.",
)
@click.option("--verbose", "-v", is_flag=True, help="Print full tracebacks (remote ones included).")
def run(
    target: str,
    inputs_path: str,
    fmt: str,
    output_path: str,
    progress: bool | None,
    detach: bool,
    verbose: bool,
    **options: Any,
) -> None:
    """Run MODULE:FUNCTION over every input; print results as JSON lines, in input order.

    MODULE is a dotted module importable from the current directory (mypkg.tasks) or a
    path to a .py file (./tasks.py). Exit status: 0 when the task succeeded (every input,
    or enough of them for --min-success-ratio: the failures are then warnings), 1 when it
    failed, was cancelled or timed out (the results it has are written, null for the rest;
    stderr says why, lists each failure, --verbose with tracebacks, and how to go on), 2 for
    bad usage, 130 when interrupted (Ctrl-C cancels the task unless --detach).
    """
    from kubemap.api.submit import submit
    from kubemap.cli.inputs import parse_inputs

    settings = {key: value for key, value in options.items() if value is not None}
    _refuse_cluster_options_here(settings)
    if detach and settings.get("backend") != "kubernetes":
        raise click.UsageError(
            "--detach leaves a task running on the cluster: it needs --backend kubernetes "
            "(a local run lives in this process)"
        )
    try:
        fn = load_function(target, verbose=verbose)
        with _open_in(inputs_path) as stream:
            items = parse_inputs(stream, fmt, source=_source_name(inputs_path))  # type: ignore[arg-type]
            map_run = submit(fn, items, **settings)
        if detach:
            click.echo(
                f"submitted MapTask {map_run.name} ({map_run.total} inputs); it runs on: "
                f"`kubemap get {map_run.name}`, `kubemap results {map_run.name}`",
                err=True,
            )
            return
        try:
            status = map_run.wait(progress=progress)
        except KeyboardInterrupt:
            _interrupted(map_run, settings.get("pool"))
        result = outcome(map_run, status)
        if result.error is not None and not (
            result.stopped or isinstance(result.error, MapTaskError)
        ):
            raise result.error  # refused, or the store broke: no results to write
        values = map_run.results(partial=True)
        _write_results(values, output_path)
        flags = _flags(settings)
        print_outcome(map_run.name, result, verbose=verbose, flags=flags, printed="run")
        if not result.ok:
            if retention.expires(map_run.store_url):
                click.echo(f"  {retention.kept_note(map_run.store_url)}", err=True)
            sys.exit(1)
        if not result.failures and "store" not in settings and _on_this_machine(map_run):
            map_run.delete()  # as kubemap.map does: the results are out, keep the store small
    except ConfigError as exc:
        raise click.UsageError(in_cli_words(str(exc))) from None
    except KubemapError as exc:
        raise click.ClickException(in_cli_words(str(exc))) from None


KUBERNETES_FLAGS = {
    "image": "--image",
    "namespace": "--namespace",
    "pool": "--pool",
    "queue": "--queue",
    "priority": "--priority",
    "env": "--env",
    "resources": "--resources",
}


def _refuse_cluster_options_here(settings: dict[str, Any]) -> None:
    """Kubernetes options on a local run: refused in this command's words (the SDK refuses
    them too, but names them as keyword arguments)."""
    if settings.get("backend") == "kubernetes":
        return
    given = [flag for key, flag in KUBERNETES_FLAGS.items() if key in settings]
    if given:
        what = (
            f"{given[0]} is a Kubernetes option"
            if len(given) == 1
            else (f"{', '.join(given)} are Kubernetes options")
        )
        raise click.UsageError(
            f"{what}, and this run is local (--backend local, the default): add --backend "
            "kubernetes to run on the cluster, or leave it out to run here"
        )


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str] | None:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"--env expects KEY=VALUE, got {pair!r}", param_hint="--env")
        env[key] = value
    return env or None


def _parse_resources(text: str | None) -> dict[str, Any] | None:
    """cpu=1,memory=2Gi (requests), or a JSON object as the SDK's resources= takes it."""
    if text is None:
        return None
    usage = (
        f"--resources expects cpu=1,memory=2Gi or a JSON object such as "
        f'{{"requests": {{"cpu": "1"}}}}, got {text!r}'
    )
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            raise click.BadParameter(usage, param_hint="--resources") from None
        if not isinstance(value, dict):
            raise click.BadParameter(usage, param_hint="--resources")
        return value
    requests: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise click.BadParameter(usage, param_hint="--resources")
        requests[key.strip()] = value.strip()
    if not requests:
        raise click.BadParameter(usage, param_hint="--resources")
    return {"requests": requests}


def _flags(settings: dict[str, Any]) -> str:
    """What `kubemap results/retry NAME` need to find the task this run made."""
    flags = ""
    if settings.get("backend") == "kubernetes":
        flags += " --backend kubernetes"
        if settings.get("namespace"):
            flags += f" -n {settings['namespace']}"
    elif settings.get("store"):
        flags += f" --store {settings['store']}"
    return flags


def _interrupted(map_run: Any, pool: str | None = None) -> None:
    """Ctrl-C while waiting: cancel the task and say so in one line, then exit 130."""
    try:
        map_run.cancel()
        what = "cancelled (its pods are deleted)" if _on_cluster(map_run) else "cancelled"
        if pool and _on_cluster(map_run):  # a pool task has no pods: its leases are revoked
            what = (
                f"cancelled (its leases on pool {pool} are taken back and the workers stop "
                "its function; the pool's workers stay up)"
            )
    except (KubemapError, KeyboardInterrupt) as exc:
        what = f"could not be cancelled ({exc}); cancel it with `kubemap cancel {map_run.name}`"
    click.echo(
        f"\ninterrupted: task {map_run.name} {what}; finished results stay in "
        f"{map_run.store_url} (--detach leaves a Kubernetes task running)",
        err=True,
    )
    sys.exit(130)


def _on_this_machine(map_run: Any) -> bool:
    return str(map_run.store_url).startswith("file://")


def _on_cluster(map_run: Any) -> bool:
    return str(map_run.store_url).startswith("s3://")


@main.command(context_settings=CONTEXT, short_help="Remove old tasks from the local store.")
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0),
    default=None,
    metavar="DAYS",
    help="Remove tasks submitted more than DAYS ago [default: $KUBEMAP_RETENTION_DAYS or 7]; "
    "0 removes every task.",
)
@click.option(
    "--store", metavar="URL", help="A directory store [default: $KUBEMAP_STORE or ~/.cache/...]."
)
@click.option(
    "--cache-older-than",
    "cache_days",
    type=click.FloatRange(min=0),
    default=None,
    metavar="DAYS",
    help="Remove cache entries not used for DAYS [default: $KUBEMAP_CACHE_DAYS or 30]; "
    "--older-than never touches the cache.",
)
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def gc(days: float | None, store: str | None, cache_days: float | None, dry_run: bool) -> None:
    """Remove the data that failed and cancelled local runs leave in the store (successful
    runs on the default store clean up after themselves), and cache entries unused for long.
    Submits to the default store do this for tasks past the retention period anyway.

    Only tasks kubemap wrote are removed (a task.json of kubemap's and nothing but its
    files; links are never followed): everything else is kept and listed with the reason."""
    from kubemap.stores import default_store_url

    url = store or default_store_url()
    try:
        done = retention.sweep(
            url,
            retention.retention_days() if days is None else days,
            cache_older_than_days=cache_days,
            dry_run=dry_run,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    for line in retention.report(done, url, dry_run=dry_run):
        click.echo(line)


@main.command(context_settings=CONTEXT, short_help="Rerun only what failed or never ran.")
@click.argument("name")
@backend_option("the task is")
@click.option("--store", metavar="URL", help="Local tasks: the store the task is in.")
@click.option("--namespace", "-n", help="Kubernetes: namespace of the MapTask.")
@click.option("--retries", type=int, default=0, show_default=True, help="Local: retries per input.")
@click.option("--parallelism", "-p", type=int, help="Local: workers at once [default: CPUs].")
@click.option(
    "--min-success-ratio",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="Local: the task succeeds if at least this share of its inputs has a result, as in "
    "`kubemap run`; below 1 the rerun keeps going past failures (0: tries every index).",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the rerun.")
@click.option("--verbose", "-v", is_flag=True, help="Print the remote tracebacks of failures.")
def retry(
    name: str,
    backend: str | None,
    store: str | None,
    namespace: str | None,
    retries: int,
    parallelism: int | None,
    min_success_ratio: float,
    wait: bool,
    verbose: bool,
) -> None:
    """Rerun the indices of task NAME that have no result (failed or never ran), into the
    same result set, with fresh retry budgets; indices that succeeded never run again. The
    task is rerun where it lives: on this machine for a local task, by the operator (the
    kubemap.io/retry annotation) for a MapTask. Exit status: 0 when the task now succeeds
    (failures tolerated by --min-success-ratio are warnings), 1 when it does not."""
    from kubemap.cli.where import attach, locate

    try:
        where = locate(name, backend=backend, store=store, namespace=namespace)
        if where.local:
            from kubemap.api.maprun import MapRun

            run = MapRun.attach(
                name,
                store=where.store,
                retries=retries,
                parallelism=parallelism,
                min_success_ratio=min_success_ratio,
            )
            before = run.status()
            run.retry()
            click.echo(
                f"task {name}: rerunning {before.total - before.succeeded} of {before.total} "
                "indices",
                err=True,
            )
            # --no-wait: a local run lives in this process, it cannot outlive the command
            status = run.wait()
        else:
            local_only = [
                flag
                for flag, given in (
                    ("--retries", retries != 0),
                    ("--parallelism", parallelism is not None),
                    ("--min-success-ratio", min_success_ratio != 1.0),
                )
                if given
            ]
            if local_only:  # not silently: the operator reruns with the MapTask's own spec
                click.echo(
                    f"note: {', '.join(local_only)} apply to tasks run on this machine; "
                    f"MapTask {name} reruns with its spec's (kubectl edit mt {name})",
                    err=True,
                )
            if not _retry_on_cluster(where, wait):
                return
            run = attach(where)
            status = run.status()
        result = outcome(run, status)
    except ConfigError as exc:
        raise click.UsageError(in_cli_words(str(exc))) from None
    except KubemapError as exc:
        raise click.ClickException(in_cli_words(str(exc))) from None
    click.echo(f"task {name}: {status.phase.value}; {result.counts}", err=True)
    print_outcome(name, result, verbose=verbose, flags=where.flags(), printed=None)
    if not result.ok:
        sys.exit(1)


def _retry_on_cluster(where: Any, wait: bool) -> bool:
    """Ask the operator to rerun MapTask where.name; True once it has (when `wait`)."""
    from kubemap.backends.kubernetes.backend import KubeRunHandle, request_retry
    from kubemap.stores import open_store

    cluster, name, body = where.cluster, where.name, where.body
    status = body.get("status") or {}
    if status.get("phase") not in ("Succeeded", "Failed", "Cancelled"):
        raise ConfigError(
            f"MapTask {name} is {status.get('phase') or 'Pending'}: retry it once it finished "
            f"(or cancel it first: kubemap cancel {name})"
        )
    total = int(status.get("total") or 0)
    token = request_retry(cluster, name)
    click.echo(
        f"MapTask {name}: rerunning {total - int(status.get('succeeded') or 0)} of {total} "
        f"indices (kubemap.io/retry={token})",
        err=True,
    )
    if not wait:
        return False
    base = ((body.get("spec") or {}).get("store") or {}).get("url") or "memory://unused"
    KubeRunHandle(cluster, name, total, open_store(base).child(name), retry_token=token).wait()
    return True


class _open_in:
    def __init__(self, path: str) -> None:
        self._path = path
        self._file: TextIO | None = None

    def __enter__(self) -> TextIO:
        if self._path == "-":
            return sys.stdin
        try:
            self._file = open(self._path, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read inputs from {self._path}: {exc.strerror}") from None
        return self._file

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


def _source_name(path: str) -> str:
    return "stdin" if path == "-" else path


def _write_results(values: list[Any], output_path: str) -> None:
    out: TextIO
    if output_path == "-":
        out = sys.stdout
        for line in _json_lines(values):
            out.write(line)
        out.flush()
        return
    with open(output_path, "w", encoding="utf-8") as out:
        for line in _json_lines(values):
            out.write(line)


def _json_lines(values: list[Any]) -> Iterator[str]:
    warned = False
    for value in values:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            if not warned:
                click.echo(
                    f"warning: a result of type {type(value).__name__} is not JSON; writing "
                    "repr() strings for such results",
                    err=True,
                )
                warned = True
            text = json.dumps(repr(value))
        yield text + "\n"


def _register_cluster_commands() -> None:
    try:
        cli_cluster = importlib.import_module("kubemap.cli.tasks")
    except ModuleNotFoundError as exc:
        if exc.name != "kubemap.cli.tasks":
            raise
        return
    cli_cluster.register(main)
    importlib.import_module("kubemap.cli.pools").register(main)  # kubemap pool ...
    importlib.import_module("kubemap.cli.timeline").register(main)  # kubemap timeline
    importlib.import_module("kubemap.cli.dashboard").register(main)  # kubemap dashboard


_register_cluster_commands()
