"""The exceptions users of kubemap can catch. Flat on purpose: one base, few leaves."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any


class KubemapError(Exception):
    """Base of every error kubemap raises on purpose."""


class ConfigError(KubemapError, ValueError):
    """An option, URL or spec is invalid; the message says which and how to fix it."""


class SerializationError(KubemapError):
    """The function or an input could not be pickled; `index` names the input (None: the function)."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class StoreError(KubemapError):
    """The object store could not be reached or answered an error; the message names the endpoint.

    `code` is the S3 error code when there is one (InvalidAccessKeyId, NoSuchBucket, ...) and
    `bucket` the bucket: a worker reports both in its termination message."""

    def __init__(self, message: str, *, code: str = "", bucket: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.bucket = bucket


class CorruptTaskError(StoreError):
    """A task's stored files are missing or inconsistent (e.g. inputs.idx does not match inputs.bin)."""


class ClusterError(KubemapError):
    """The Kubernetes API could not be reached or refused a request."""


class TimeoutError(KubemapError, builtins.TimeoutError):
    """A run did not finish within its timeout; finished results stay in the store."""


class CancelledError(KubemapError):
    """The run was cancelled before every index finished."""


def api_error_message(exc: Any) -> str:
    """The API server's own message of a refused request (a kubernetes ApiException: its
    JSON body's "message", else its reason). Duck-typed so this module stays import-free."""
    import json

    try:
        return str(json.loads(getattr(exc, "body", None) or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError, TypeError):
        return f"HTTP {getattr(exc, 'status', '?')} {getattr(exc, 'reason', '')}".strip()


@dataclass(frozen=True)
class RemoteError:
    """One index's failure, as recorded by the worker that ran it."""

    index: int
    type: str
    message: str
    traceback: str
    attempts: int = 1

    def __str__(self) -> str:
        return f"index {self.index}: {self.type}: {self.message}"

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RemoteError:
        return cls(
            index=int(record["index"]),
            type=str(record.get("type", "Exception")),
            message=str(record.get("message", "")),
            traceback=str(record.get("traceback", "")),
            attempts=int(record.get("attempts", 1)),
        )


class MapTaskError(KubemapError):
    """The run did not produce every result. `failures` maps index -> RemoteError for the
    indices that failed beyond their retries; `not_run` holds the indices never run (the
    run stopped first). Results of the indices that succeeded stay reachable through
    `MapRun.results(partial=True)` and in the store.
    """

    def __init__(
        self,
        failures: dict[int, RemoteError],
        *,
        total: int,
        name: str = "",
        not_run: Any = (),
        succeeded: int | None = None,
        why: str | None = None,
    ) -> None:
        self.failures = dict(sorted(failures.items()))
        self.not_run = not_run  # kubemap.core.ranges.IndexRanges: iterate, len(), `in`
        self.total = total
        self.name = name
        n_not_run = len(not_run)
        self.succeeded = (
            succeeded if succeeded is not None else total - len(self.failures) - n_not_run
        )
        self.why = why
        super().__init__(self._describe())

    @property
    def summary(self) -> str:
        """One line: why the run stopped and the three counts (what the CLI prints)."""
        task = f"task {self.name}" if self.name else "the task"
        counts = (
            f"{self.succeeded} succeeded, {len(self.failures)} failed, {len(self.not_run)} not run"
        )
        if not self.failures:
            return f"{task} failed ({self.why or counts})"
        first = next(iter(self.failures.values()))
        what = f"index {first.index} failed ({first.type}: {first.message})"
        head = f"{task} stopped after {what}" if len(self.not_run) else f"{task}: {what}"
        return f"{head}; {counts}"

    def _describe(self) -> str:
        if not self.failures:
            return self.summary
        first = next(iter(self.failures.values()))
        return f"{self.summary}\n\nRemote traceback of index {first.index}:\n" + (
            first.traceback.rstrip() or "(none recorded)"
        )
