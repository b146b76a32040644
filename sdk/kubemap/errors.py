"""The exceptions users of kubemap can catch. Flat on purpose: one base, few leaves."""

from __future__ import annotations

import builtins
import functools
import importlib
import sys
from typing import Any


class KubemapError(Exception):
    """Base of every error kubemap raises on purpose."""


class ConfigError(KubemapError, ValueError):
    """An option, URL or spec is invalid; the message says which and how to fix it."""


class SerializationError(KubemapError):
    """The function or an input could not be pickled; `index` names the input (None: the function).

    Args:
        message: What could not be pickled, and how to make it picklable.
        index: The input's index, or None for the function.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class StoreError(KubemapError):
    """The object store could not be reached or answered an error; the message names the endpoint.

    `code` is the S3 error code when there is one (InvalidAccessKeyId, NoSuchBucket, ...) and
    `bucket` the bucket: a worker reports both in its termination message.

    Args:
        message: What failed, naming the endpoint.
        code: The S3 error code, if any.
        bucket: The bucket, if any.
    """

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


class RemoteError(KubemapError):
    """One index's failure, as recorded by the worker that ran it: an exception, so that
    return_exceptions=True gives what asyncio.gather(return_exceptions=True) gives, and
    `raise error` prints the remote traceback (as its cause, the way ProcessPoolExecutor
    shows a worker's).

    When the user's own exception class is importable here (its module:qualname is in the
    record), the error is also an instance of it, as Ray's RayTaskError is: `except
    MyError:` catches it. Otherwise (or when that class cannot be subclassed) it is a
    plain RemoteError. Its fields: `index`, `type` (the class's name), `message`,
    `traceback` (the remote one, as text), `attempts`, `origin` ("module:qualname" or "").

    Args:
        index: The input's index.
        type: The remote exception's class name ("NotRun" for an index never run).
        message: Its message.
        traceback: The remote traceback, as text.
        attempts: How many attempts the index had.
        origin: The exception class's "module:qualname", or "".
    """

    def __init__(
        self,
        index: int,
        type: str,
        message: str,
        traceback: str = "",
        attempts: int = 1,
        origin: str = "",
    ) -> None:
        # Exception.__init__, not super(): in a subclass made with the user's class, the
        # next __init__ in line is theirs, whose arguments we do not know.
        Exception.__init__(self, f"index {index}: {type}: {message}")
        self.index = index
        self.type = type
        self.message = message
        self.traceback = traceback
        self.attempts = attempts
        self.origin = origin
        if traceback:
            self.__cause__ = _RemoteTraceback(traceback)

    def __str__(self) -> str:
        return f"index {self.index}: {self.type}: {self.message}"

    def __repr__(self) -> str:
        return f"{builtins.type(self).__name__}({self.index}, {self.type!r}, {self.message!r})"

    def _fields(self) -> tuple[int, str, str, str, int, str]:
        return (self.index, self.type, self.message, self.traceback, self.attempts, self.origin)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RemoteError):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt where it is unpickled: the user's class is looked up there.
        return (_rebuild, self._fields())

    def with_index(self, index: int) -> RemoteError:
        """The same failure under another index (a cached run's caller's numbering)."""
        return _rebuild(index, *self._fields()[1:])

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RemoteError:
        """The error a worker recorded in the task's errors/ folder.

        Args:
            record: The failure record (index, type, message, traceback, attempts, class).
        """
        return _rebuild(
            int(record["index"]),
            str(record.get("type", "Exception")),
            str(record.get("message", "")),
            str(record.get("traceback", "")),
            int(record.get("attempts", 1)),
            str(record.get("class", "")),
        )


class _RemoteTraceback(Exception):
    """The cause Python prints above a raised RemoteError: the worker's traceback."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


def _rebuild(
    index: int, type: str, message: str, traceback: str, attempts: int, origin: str
) -> RemoteError:
    kind = _with_cause_class(origin) if origin else None
    if kind is not None:
        try:
            return kind(index, type, message, traceback, attempts, origin)
        except Exception:  # an odd class (OSError's __new__...): a plain RemoteError then
            pass
    return RemoteError(index, type, message, traceback, attempts, origin)


def _with_cause_class(origin: str) -> builtins.type[RemoteError] | None:
    """RemoteError subclassed with the class named "module:qualname", or None when that
    class is not importable here or cannot be a base. Importable here: its module, or at
    least its top-level package, is imported already; reading failures never imports a
    library afresh (`kubemap results` of a task that raised a torch error stays fast)."""
    module_name, _, qualname = origin.partition(":")
    if module_name.partition(".")[0] not in sys.modules:
        return None
    try:
        value: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
        for part in qualname.split("."):
            value = getattr(value, part)
    except Exception:
        return None
    if not isinstance(value, builtins.type):
        return None
    return _dual_class(value)


@functools.cache
def _dual_class(cause: builtins.type[Any]) -> builtins.type[RemoteError] | None:
    # One class per cause class, as Ray's as_instanceof_cause caches them.
    if not issubclass(cause, Exception) or issubclass(cause, RemoteError):
        return None
    name = f"RemoteError({cause.__name__})"
    try:
        kind = builtins.type(name, (RemoteError, cause), {"__module__": __name__})
    except TypeError:  # a final class or a layout conflict (some C exception types)
        return None
    kind.__qualname__ = name
    return kind


class MapTaskError(KubemapError):
    """The run did not produce every result. Every index is in exactly one of:

    - `failures`: index -> RemoteError for each index that failed and has no result:
      its last attempt failed, or an attempt failed and the run stopped (fail-fast,
      timeout, cancel) before its pending retry ran. The error is the one recorded.
    - `not_run`: the indices with neither a result nor a failure (the run stopped first).
    - `succeeded`: the number with a result (a retry that succeeded counts here), which
      stay reachable through `MapRun.results(partial=True)` and in the store.

    Its message (and `summary`) says why the run stopped and the three counts; `why` is the
    task's own message when it has one.

    Args:
        failures: index -> RemoteError of every failed index.
        total: The number of inputs.
        name: The task's name.
        not_run: The indices never run (IndexRanges: iterate it, len(), `in`).
        succeeded: How many have a result; default total minus the others.
        why: Why the task stopped, as its status says.
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
