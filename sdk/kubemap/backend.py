"""The small interface between the SDK surface (api.py) and the places runs execute.

A backend starts a run over a task whose files are already in the store (fn.pkl,
inputs.bin/.idx, task.json) and hands back a `RunHandle`. Everything that grows with the
task's size -- results, error records -- stays in the store, where `MapRun` reads it, so a
backend only reports small counts and a phase.

Two implementations:
  - `kubemap.local.LocalBackend`: a process pool on this machine (the default).
  - `kubemap.kube.KubernetesBackend`: a MapTask custom resource reconciled by the operator.
    api.py imports kubemap.kube only when `backend="kubernetes"` is asked for, so the
    local path never pays for the Kubernetes client.

A handle's final status is decided from the store's result objects, not from memory: an
index counts as succeeded only when its result object exists.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kubemap.errors import ConfigError
from kubemap.models import Phase, RunOptions
from kubemap.store import Store

# Why a finished run did not succeed; MapRun turns each into the matching exception.
REASON_FAILED_INDEXES = "FailedIndexes"  # too many indices failed -> MapTaskError
REASON_DEADLINE = "DeadlineExceeded"  # options.timeout passed -> kubemap.TimeoutError
REASON_CANCELLED = "Cancelled"  # cancel() or an interrupt -> CancelledError
REASON_INFRASTRUCTURE = "InfrastructureError"  # store or workers broke -> StoreError


@dataclass(frozen=True)
class RunStatus:
    """A snapshot of a run; small whatever the number of inputs."""

    phase: Phase
    total: int
    succeeded: int = 0
    failed: int = 0  # indices that failed for good (beyond their retries)
    active: int = 0  # indices being worked on right now
    reason: str | None = None  # one of the REASON_* values when a finished run did not succeed
    message: str | None = None  # human-readable detail, e.g. the infrastructure error

    @property
    def finished(self) -> bool:
        return self.phase.finished

    @property
    def pending(self) -> int:
        """Indices not yet started (or waiting for a retry)."""
        return max(0, self.total - self.succeeded - self.failed - self.active)


@runtime_checkable
class RunHandle(Protocol):
    """One started run. Methods are safe to call from any thread, any number of times."""

    def status(self) -> RunStatus:
        """The current snapshot; cheap enough to poll a few times a second."""
        ...

    def wait(self, timeout: float | None = None) -> RunStatus:
        """Block until the run finishes or `timeout` seconds pass; return the status then.

        Never raises for the run's own failure: the caller reads phase and reason.
        """
        ...

    def cancel(self) -> None:
        """Stop the run: no new work starts, running work is stopped. Finished results stay."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Starts runs. `task` is the task's own store prefix, already holding its files."""

    name: str

    def preflight(self, store_url: str, options: RunOptions) -> None:
        """Refuse, with a ConfigError or ClusterError, what would fail only after the upload."""
        ...

    def start(self, task: Store, total: int, options: RunOptions, name: str) -> RunHandle:
        """Start running `total` indices of the task called `name`; return at once."""
        ...


def get_backend(name: str) -> Backend:
    """The backend called `name` ("local" or "kubernetes"), imported on first use."""
    if name == "local":
        from kubemap.local import LocalBackend

        return LocalBackend()
    if name == "kubernetes":
        try:
            kube = importlib.import_module("kubemap.kube")
        except ModuleNotFoundError as exc:
            if exc.name != "kubemap.kube":
                raise
            raise ConfigError(
                "backend='kubernetes' is not available in this install of kubemap "
                "(module kubemap.kube is missing); use backend='local' or upgrade kubemap"
            ) from None
        backend: Backend = kube.KubernetesBackend()
        return backend
    raise ConfigError(f"unknown backend {name!r}: use 'local' or 'kubernetes'")
