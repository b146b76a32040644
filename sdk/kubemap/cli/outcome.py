"""How the CLI tells a task's outcome: one line per failure by default, tracebacks on
--verbose, and the counts. Shared by `kubemap run` and `kubemap retry` (cli.py) and
`kubemap results` and `kubemap get` (cli_cluster.py), so that every line a user reads
counts the same way: as the SDK's MapTaskError does (failures() and not_run()), with the
phase of status(); the exit status follows that phase."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from kubemap.core.status import Phase, Reason, RunStatus
from kubemap.errors import KubemapError, MapTaskError, RemoteError

if TYPE_CHECKING:
    from kubemap.api.maprun import MapRun

FAILURES_LISTED = 10
_COUNTS = re.compile(r"[;,]? *\d+ succeeded, \d+ failed, \d+ not run(, \d+ running)?")


def in_cli_words(text: str) -> str:
    """The SDK's hints name keyword arguments (backend='local'); the CLI's are flags."""
    for backend in ("local", "kubernetes"):
        for quoted in (f"backend='{backend}'", f'backend="{backend}"'):
            text = text.replace(quoted, f"--backend {backend}")
    return text


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


@dataclass(frozen=True)
class Outcome:
    """A task's state as every CLI line reports it."""

    status: RunStatus  # the phase, reason and message
    succeeded: int
    failures: dict[int, RemoteError]
    not_run: int
    error: KubemapError | None  # what the SDK raises for it (None: it succeeded)

    @property
    def counts(self) -> str:
        return f"{self.succeeded} succeeded, {len(self.failures)} failed, {self.not_run} not run"

    @property
    def ok(self) -> bool:
        """The exit status 0: the phase is Succeeded (tolerated failures included)."""
        return self.status.phase is Phase.SUCCEEDED

    @property
    def stopped(self) -> str | None:
        """'was cancelled' / 'timed out' for a run stopped before it tried every index."""
        if self.status.reason is Reason.CANCELLED or self.status.phase is Phase.CANCELLED:
            return "was cancelled"
        if self.status.reason is Reason.DEADLINE:
            return "timed out"
        return None


def why(status: RunStatus) -> str:
    """The recorded message without the counts it ends with: the CLI prints its own (a
    rerun's record counts only what the rerun ran)."""
    return _COUNTS.sub("", status.message or "").strip(" ;,")


def outcome(run: MapRun, status: RunStatus | None = None) -> Outcome:
    """The outcome of `run` (finished, or as far as it got): the counts of MapTaskError
    (failures() and not_run()) for one that did not succeed, else of its status."""
    status = status or run.status()
    error: KubemapError | None = None
    if status.finished and status.phase is not Phase.SUCCEEDED:
        try:
            run.results()  # raises before it reads any result: the SDK's own account
        except MapTaskError as exc:
            error = exc
            failures, not_run = exc.failures, len(exc.not_run)
            return Outcome(status, exc.succeeded, failures, not_run, error)
        except KubemapError as exc:
            error = exc  # cancelled, timed out, refused: counted from the records below
    if not status.finished or (status.phase is Phase.SUCCEEDED and not status.failed):
        return Outcome(status, status.succeeded, {}, status.total - status.succeeded, error)
    failures = run.failures()
    not_run = len(run.not_run())
    return Outcome(status, run.total - len(failures) - not_run, failures, not_run, error)


def print_outcome(
    name: str,
    result: Outcome,
    *,
    verbose: bool,
    flags: str = "",
    printed: str | None,
    severity: str = "error",
) -> None:
    """The stderr account of a task that has not every result: what stopped it, the three
    counts, each failure, and the commands that go on from there. `printed`: the command
    that wrote the results (null where there are none), None if none were written; `flags`
    reach the task again (--store ...);
    `severity` heads the first line ("warning" when the command exits 0 all the same)."""
    ref = f"{name}{flags}"
    missing = len(result.failures) + result.not_run
    nulls = "; their results are written as null" if printed and missing else ""
    if result.ok:
        if result.failures:
            click.echo(
                f"warning: {len(result.failures)} of {result.status.total} inputs failed "
                f"(tolerated by --min-success-ratio): {result.counts}{nulls}",
                err=True,
            )
            print_failures(result.failures, verbose=verbose)
        return
    error = result.error
    if isinstance(error, MapTaskError):
        click.echo(f"{severity}: {error.summary}{nulls}", err=True)
    elif result.stopped:
        reason = why(result.status)
        said = f"{reason}; {result.counts}" if reason else result.counts
        click.echo(f"{severity}: task {name} {result.stopped}: {said}{nulls}", err=True)
    else:
        text = str(error) if error else result.counts
        click.echo(f"{severity}: {text.splitlines()[0]}", err=True)
    print_failures(result.failures, verbose=verbose)
    if not printed and result.succeeded:
        partial = " --partial" if result.stopped else ""
        click.echo(
            f"  `kubemap results {ref}{partial}` prints the {result.succeeded} results it "
            "has (null for the rest)",
            err=True,
        )
    elif not printed and result.stopped:
        click.echo("  no input has a result: --partial would print only null", err=True)
    elif printed == "run" and result.succeeded and result.stopped:
        click.echo(f"  `kubemap results {ref} --partial` prints them again", err=True)
    if result.not_run:
        rest = "those and the failed ones" if result.failures else "only those"
        ratio = "" if result.stopped else ", --min-success-ratio below 1 keeps going past failures"
        click.echo(
            f"  not run: {result.not_run} inputs; `kubemap retry {ref}` runs {rest}{ratio}",
            err=True,
        )
    elif result.failures:
        click.echo(f"  `kubemap retry {ref}` reruns the failed ones", err=True)
