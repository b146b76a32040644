"""The small interface between the SDK surface (api.py) and the places runs execute.

A backend starts a run over a task whose files are already in the store (fn.pkl,
inputs.bin/.idx, task.json) and hands back a `RunHandle`. Everything that grows with the
task's size -- results, error records -- stays in the store, where `MapRun` reads it, so a
backend only reports small counts and a phase, through `kubemap.core.status.run_status`.

Two implementations, both executing `kubemap.core.plan.plan`:
  - `kubemap.backends.local.backend.LocalBackend`: processes on this machine (the default).
  - `kubemap.backends.kubernetes.backend.KubernetesBackend`: a MapTask reconciled by the operator.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from kubemap.core.ranges import IndexRanges
from kubemap.core.status import RunStatus
from kubemap.errors import TimeoutError
from kubemap.resources.options import RunOptions
from kubemap.stores.base import Store


@runtime_checkable
class RunHandle(Protocol):
    """One started run. Methods are safe to call from any thread, any number of times."""

    name: str

    def status(self) -> RunStatus:
        """The current snapshot; cheap enough to poll a few times a second."""
        ...

    def wait(self, timeout: float | None = None) -> RunStatus:
        """Block until the run finishes and return its final status.

        Raises kubemap.TimeoutError if `timeout` seconds pass first (the run goes on);
        never raises for the run's own failure: the caller reads phase and reason.
        """
        ...

    def done(self) -> bool:
        """True once the run is finished (succeeded, failed or cancelled)."""
        ...

    def cancel(self) -> bool:
        """Stop the run: nothing new starts, running work stops, finished results stay.
        True if this call stopped something; False if the run had already finished."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Starts runs. `task` is the task's own store prefix, already holding its files."""

    name: str

    def discover(self, options: RunOptions) -> Store | None:
        """Before anything is written: the store this backend's install names for runs when
        the caller named none (None: the caller's), after checks that need no store."""
        ...

    def preflight(self, store_url: str, options: RunOptions) -> None:
        """Refuse, with a ConfigError or ClusterError, what would fail only after the upload."""
        ...

    def start(self, task: Store, total: int, options: RunOptions, name: str) -> RunHandle:
        """Start running `total` indices of the task called `name`; return at once."""
        ...

    def retry(
        self, task: Store, total: int, options: RunOptions, name: str, succeeded: IndexRanges
    ) -> RunHandle:
        """Run a finished task again, into the same result set: only the indices outside
        `succeeded` (those without a result), with fresh retry budgets; return at once."""
        ...


def wait_by_polling(
    handle: RunHandle, timeout: float | None, *, every: float, sleep: float | None = None
) -> RunStatus:
    """RunHandle.wait for handles that can only poll: status() every `every` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = handle.status()
        if current.finished:
            return current
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise still_running(handle.name, current, timeout)
        time.sleep(every if left is None else max(0.0, min(every, left)))


def still_running(name: str, status: RunStatus, timeout: float | None) -> TimeoutError:
    return TimeoutError(
        f"task {name} is still running after waiting {timeout or 0:g}s ({status.counts()}); "
        "it goes on: call wait() again, or cancel() it"
    )


__all__ = ["Backend", "RunHandle", "still_running", "wait_by_polling"]
