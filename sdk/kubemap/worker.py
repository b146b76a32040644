"""The worker runtime every function-mode pod runs: `python -m kubemap.worker`.

It reads its slice from the environment (KUBEMAP_TASK_URL, KUBEMAP_INDEX, KUBEMAP_COUNT,
KUBEMAP_TOTAL, KUBEMAP_ATTEMPT), fetches the function and its inputs (two ranged GETs),
runs the function on each item, writes one write-once result object for the items that
succeeded and an error record (type, message, traceback) for each that raised, and exits:

    0  every index succeeded (or had a result already)
    3  the user's function raised for at least one index (error records written)
    4  infrastructure failed: store unreachable, task corrupt, function's module missing
    5  the environment breaks the contract (a variable missing or malformed)

A one-line JSON summary ({"v":1,"succeeded":"0-2,4","failed":"3"}) goes to the termination
log, which the kubelet copies into the pod status, so the operator needs no S3 access.
`run_slice` is the same code path the local backend runs in its worker processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from kubemap import taskdata
from kubemap.contract import (
    DEFAULT_TERMINATION_LOG,
    ENV_ATTEMPT,
    ENV_COUNT,
    ENV_INDEX,
    ENV_TASK_URL,
    ENV_TERMINATION_LOG,
    ENV_TOTAL,
    EXIT_INFRA_ERROR,
    EXIT_OK,
    EXIT_USAGE_ERROR,
    EXIT_USER_ERROR,
    result_key,
)
from kubemap.core.ranges import IndexRanges
from kubemap.errors import (
    ConfigError,
    CorruptTaskError,
    RemoteError,
    SerializationError,
    StoreError,
)
from kubemap.stores import Store, open_store

SUMMARY_LIMIT = 4096
_WRITE_RESULT_TRIES = 8
_TRACEBACKS_LOGGED = 3


@dataclass(frozen=True)
class SliceOutcome:
    """What one run of a slice did. `errors` holds the records written for `failed`."""

    succeeded: IndexRanges = field(default_factory=IndexRanges)
    failed: IndexRanges = field(default_factory=IndexRanges)
    skipped: IndexRanges = field(default_factory=IndexRanges)  # had results (earlier attempt)
    errors: dict[int, RemoteError] = field(default_factory=dict)


class Terminated(BaseException):
    """SIGTERM arrived: stop now (BaseException, so the user-error handler lets it pass)."""


def error_record(index: int, exc: BaseException, attempt: int) -> dict[str, Any]:
    """The failure record of one index: type, message, and the traceback from the user's
    function down (the worker's own frame is left out)."""
    tb = exc.__traceback__
    user_tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not hide the failure
        message = f"<{type(exc).__name__} with an unprintable message>"
    return {
        "index": index,
        "type": type(exc).__qualname__,
        "message": message,
        "traceback": "".join(traceback.format_exception(type(exc), exc, user_tb)),
        "attempt": attempt,
        "attempts": attempt + 1,
        "host": socket.gethostname(),
    }


def run_slice(
    task: Store,
    start: int,
    count: int,
    *,
    fn: Callable[..., Any] | None = None,
    attempt: int = 0,
    skip_done: bool = True,
) -> SliceOutcome:
    """Run fn over items [start, start+count) of the task and record what happened.

    User exceptions become error records and `failed`; infrastructure failures (store,
    corrupt task, the function's module missing here) raise StoreError/CorruptTaskError.
    With skip_done on a retry (attempt > 0), indices that already have a result are skipped.
    """
    span = IndexRanges.span(start, start + count)
    done = (
        taskdata.done_in_slice(task, start, count) if skip_done and attempt > 0 else IndexRanges()
    )
    todo = span - done
    if not todo:
        return SliceOutcome(skipped=done)
    if fn is None:
        fn = taskdata.read_function(task)
    items = taskdata.read_slice(task, start, count)
    values: dict[int, Any] = {}
    records: dict[int, dict[str, Any]] = {}
    for index in todo:
        try:
            values[index] = fn(items[index - start])
        except Exception as exc:
            records[index] = error_record(index, exc, attempt)
    blob = _encode(values, records, attempt)
    for index, record in records.items():
        taskdata.write_error(task, index, record)
    if values:
        _save_results(task, start, count, values, blob)
    return SliceOutcome(
        succeeded=IndexRanges.of(values),
        failed=IndexRanges.of(records),
        skipped=done,
        errors={i: RemoteError.from_record(r) for i, r in records.items()},
    )


def _encode(values: dict[int, Any], records: dict[int, dict[str, Any]], attempt: int) -> bytes:
    """Encode the results; a value that cannot be pickled fails its index instead."""
    while True:
        try:
            return taskdata.encode_results(values)
        except SerializationError as exc:
            if exc.index is None or exc.index not in values:
                raise
            del values[exc.index]
            records[exc.index] = error_record(exc.index, exc, attempt)


def _save_results(task: Store, start: int, count: int, values: dict[int, Any], blob: bytes) -> None:
    """Write the slice's result object once. If it exists already (a duplicate pod, or a
    retry after a partial success), add only the indices still missing, under a free key."""
    if task.put_if_absent(result_key(start, count), blob):
        return
    for _ in range(_WRITE_RESULT_TRIES):
        keys = taskdata.slice_result_keys(task, start, count)
        covered = IndexRanges()
        for key in keys:
            covered = covered | taskdata.indices_of(task, key)
        missing = {i: v for i, v in values.items() if i not in covered}
        if not missing:
            return  # another run recorded every one of them: first writer wins
        first, last = min(missing), max(missing)
        taken = set(keys)
        span = last - first + 1
        while result_key(first, span) in taken:
            span += 1  # the key only names the object; its header lists the indices
        if taskdata.write_results(task, first, span, missing):
            return
    raise StoreError(
        f"could not record the results of items {start}..{start + count - 1} in {task.url}: "
        f"{_WRITE_RESULT_TRIES} concurrent writers raced for the same keys; retry the slice"
    )


# -- the pod entry point -------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerEnv:
    task_url: str
    start: int
    count: int
    total: int | None
    attempt: int

    @classmethod
    def parse(cls, environ: Mapping[str, str]) -> WorkerEnv:
        def number(name: str, *, required: bool, minimum: int) -> int | None:
            text = environ.get(name, "").strip()
            if not text:
                if required:
                    raise ConfigError(f"{name} is not set")
                return None
            try:
                value = int(text)
            except ValueError:
                raise ConfigError(f"{name}={text!r} is not an integer") from None
            if value < minimum:
                raise ConfigError(f"{name}={value} must be >= {minimum}")
            return value

        task_url = environ.get(ENV_TASK_URL, "").strip()
        if not task_url:
            raise ConfigError(f"{ENV_TASK_URL} is not set")
        start = number(ENV_INDEX, required=True, minimum=0)
        count = number(ENV_COUNT, required=True, minimum=1)
        total = number(ENV_TOTAL, required=False, minimum=0)
        attempt = number(ENV_ATTEMPT, required=False, minimum=0) or 0
        assert start is not None and count is not None
        if total is not None and start + count > total:
            raise ConfigError(
                f"{ENV_INDEX}={start} + {ENV_COUNT}={count} is past {ENV_TOTAL}={total}"
            )
        return cls(task_url, start, count, total, attempt)


def store_error_code(exc: Exception) -> str:
    """The S3 error code of a store failure ("InvalidAccessKeyId"), from the exception or,
    failing that, from the "(Code: message)" the store puts in its message."""
    code = str(getattr(exc, "code", "") or "")
    if not code:
        found = re.search(r"\(([A-Z][A-Za-z]+):", str(exc))
        code = found.group(1) if found else ""
    return code


def record_infra_failure(task: Store, start: int, count: int, exc: Exception, attempt: int) -> None:
    """Best effort: an error record per index, so a failure that is not the user's function's
    is still explained by failures(); a store that is down simply gets none."""
    try:
        for index in range(start, start + count):
            taskdata.write_error(
                task,
                index,
                {
                    "type": type(exc).__name__,
                    "message": str(exc)[:2000],
                    "traceback": "",
                    "attempt": attempt,
                    "infrastructure": True,
                },
            )
    except StoreError:
        pass


def summary_line(outcome: SliceOutcome) -> str:
    """`{"v":1,"succeeded":"0-2,4","failed":"3"}`, at most SUMMARY_LIMIT bytes."""
    done = outcome.succeeded | outcome.skipped
    full: dict[str, Any] = {"v": 1, "succeeded": str(done), "failed": str(outcome.failed)}
    first = next(iter(sorted(outcome.errors.items())), None)
    if first is not None:  # the operator names it in the task's message: "ValueError: bad 3"
        full["error"] = f"{first[1].type}: {first[1].message}"[:200]
    for candidate in (full, {"v": 1, "failed": str(outcome.failed)}, {"v": 1, "truncated": True}):
        line = json.dumps(candidate, separators=(",", ":"))
        if len(line.encode()) <= SUMMARY_LIMIT:
            return line
    raise AssertionError("unreachable")  # pragma: no cover


def _write_termination_log(environ: Mapping[str, str], line: str) -> None:
    path = environ.get(ENV_TERMINATION_LOG) or DEFAULT_TERMINATION_LOG
    if ENV_TERMINATION_LOG not in environ and not os.path.exists(path):
        return  # not in a pod: never create /dev/termination-log on a workstation
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(line)
    except OSError:
        pass  # best effort: the exit code carries the essential outcome


def _log(message: str) -> None:
    print(f"kubemap worker: {message}", file=sys.stderr, flush=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main(environ: Mapping[str, str] | None = None) -> int:
    env_map = os.environ if environ is None else environ
    try:
        env = WorkerEnv.parse(env_map)
        task = open_store(env.task_url)
    except ConfigError as exc:
        _log(
            f"bad environment: {exc}. This program runs inside pods that kubemap creates; it "
            f"needs {ENV_TASK_URL}, {ENV_INDEX}, {ENV_COUNT} (and optionally {ENV_TOTAL}, "
            f"{ENV_ATTEMPT})"
        )
        return EXIT_USAGE_ERROR
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    last = env.start + env.count - 1
    try:
        outcome = run_slice(task, env.start, env.count, attempt=env.attempt)
    except Terminated:
        _log(f"terminated (SIGTERM) while running items {env.start}..{last}; nothing recorded")
        return EXIT_INFRA_ERROR
    except StoreError as exc:
        _log(f"infrastructure failure for items {env.start}..{last} of {env.task_url}: {exc}")
        cause = {
            "kind": "corrupt" if isinstance(exc, CorruptTaskError) else "store",
            "code": store_error_code(exc),
            "message": str(exc)[:300],
        }
        _write_termination_log(
            env_map,
            json.dumps({"v": 1, "infra": str(exc)[:2000], "cause": cause}, separators=(",", ":")),
        )
        record_infra_failure(task, env.start, env.count, exc, env.attempt)
        return EXIT_INFRA_ERROR
    except Exception as exc:  # a bug in kubemap itself: say so, let the operator retry
        _log(
            f"internal error for items {env.start}..{last}: {type(exc).__name__}: {exc}\n"
            + "".join(traceback.format_exception(exc))
        )
        return EXIT_INFRA_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)
    for n, (index, error) in enumerate(sorted(outcome.errors.items())):
        _log(f"index {index} failed: {error.type}: {error.message}")
        if n < _TRACEBACKS_LOGGED:
            print(error.traceback.rstrip(), file=sys.stderr, flush=True)
    _log(
        f"items {env.start}..{last} of {env.task_url}: {len(outcome.succeeded)} succeeded, "
        f"{len(outcome.failed)} failed, {len(outcome.skipped)} already done"
    )
    _write_termination_log(env_map, summary_line(outcome))
    return EXIT_USER_ERROR if outcome.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
