"""The `kubemap` command line. `kubemap run` maps a function from a module or file over the
items of a file; the cluster commands (get, list, logs, cancel, results, crd) live in
kubemap.cli_cluster and are added to this group when that module is installed."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import click

from kubemap.errors import ConfigError, KubemapError, MapTaskError, RemoteError

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
    help="Input format; auto detects it from the first line.",
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
    "--progress/--no-progress", default=None, help="Progress bar [default: on a terminal]."
)
def run(
    target: str,
    inputs_path: str,
    fmt: str,
    output_path: str,
    progress: bool | None,
    **options: Any,
) -> None:
    """Run MODULE:FUNCTION over every input; print results as JSON lines, in input order.

    MODULE is a dotted module importable from the current directory (mypkg.tasks) or a
    path to a .py file (./tasks.py). Exit status: 0 when every input succeeded, 1 when
    some failed (their tracebacks go to stderr, their results are null), 2 for bad usage.
    """
    from kubemap.api import submit
    from kubemap.inputs import parse_inputs

    settings = {key: value for key, value in options.items() if value is not None}
    try:
        fn = load_function(target)
        with _open_in(inputs_path) as stream:
            items = parse_inputs(stream, fmt, source=_source_name(inputs_path))  # type: ignore[arg-type]
            map_run = submit(fn, items, **settings)
        try:
            map_run.wait(progress=progress)
        except KeyboardInterrupt:
            map_run.cancel()
            raise
        try:
            values = map_run.results()
        except MapTaskError as exc:
            values = map_run.results(partial=True)
            _write_results(values, output_path)
            _report_failures(exc)
            sys.exit(1)
        _write_results(values, output_path)
        tolerated = map_run.failures() if map_run.status().failed else {}
        if tolerated:
            click.echo(
                f"warning: {len(tolerated)} of {map_run.total} inputs failed (tolerated by "
                f"--min-success-ratio); their results are null",
                err=True,
            )
            _print_failures(tolerated)
        elif "store" not in settings and map_run.store_url.startswith("file://"):
            map_run.delete()  # as kubemap.map does: the results are out, keep the store small
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except KubemapError as exc:
        raise click.ClickException(str(exc)) from None


def load_function(target: str) -> Callable[..., Any]:
    """MODULE:FUNCTION -> the function; MODULE is dotted (from the cwd) or a .py path."""
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise ConfigError(
            f"expected MODULE:FUNCTION, got {target!r}: e.g. tasks:square or ./tasks.py:square"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        module = _import_file(Path(module_part))
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name and module_part.startswith(exc.name):
                raise ConfigError(
                    f"no module named {module_part!r} (looked in {cwd} and the installed "
                    "packages): run from the directory that holds it, or give a .py path"
                ) from None
            raise
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigError(f"{module_part} has no {attr!r}: check the function name") from None
    if not callable(value):
        raise ConfigError(f"{target} is a {type(value).__name__}, not a function")
    return value  # type: ignore[no-any-return]


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # so the file's own sibling imports work
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}: is it a Python file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


def _report_failures(exc: MapTaskError) -> None:
    click.echo(
        f"error: {len(exc.failures)} of {exc.total} inputs failed in task {exc.name}; "
        "their results are written as null",
        err=True,
    )
    _print_failures(exc.failures)


def _print_failures(failures: dict[int, RemoteError]) -> None:
    for index, failure in failures.items():
        click.echo(f"\n--- index {index}: {failure.type}: {failure.message}", err=True)
        if failure.traceback:
            click.echo(failure.traceback.rstrip(), err=True)


def _register_cluster_commands() -> None:
    try:
        cli_cluster = importlib.import_module("kubemap.cli_cluster")
    except ModuleNotFoundError as exc:
        if exc.name != "kubemap.cli_cluster":
            raise
        return
    cli_cluster.register(main)
    importlib.import_module("kubemap.cli_pool").register(main)  # kubemap pool ...


_register_cluster_commands()
