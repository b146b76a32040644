"""How the CLI prints failures: one line each by default, tracebacks on --verbose.
Shared by `kubemap run` (cli.py) and `kubemap results` (cli_cluster.py)."""

from __future__ import annotations

import click

from kubemap.errors import RemoteError

FAILURES_LISTED = 10


def print_failures(failures: dict[int, RemoteError], *, verbose: bool = False) -> None:
    """One line per failure (the first FAILURES_LISTED); --verbose adds every traceback."""
    for n, (index, failure) in enumerate(failures.items()):
        if not verbose and n == FAILURES_LISTED:
            click.echo(f"  ... and {len(failures) - n} more", err=True)
            break
        message = (failure.message.splitlines() or [""])[0]
        click.echo(f"  index {index}: {failure.type}: {message}", err=True)
        if verbose and failure.traceback:
            click.echo(failure.traceback.rstrip() + "\n", err=True)
    if failures and not verbose:
        click.echo("  (--verbose prints the remote tracebacks)", err=True)
