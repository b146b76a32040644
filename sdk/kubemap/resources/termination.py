"""The one-line JSON a worker leaves in its pod's termination log, for the operator.

{"v":1,"succeeded":"0-2,4","failed":"3"} after a run; {"v":1,"infra":...,"cause":{...}} when
the platform or the store failed; {"v":1,"refused":...,"cause":{"kind":"version",...}} for a
task from another Python minor. core.attempts.Report parses them back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from kubemap.core.ranges import IndexRanges
from kubemap.errors import CorruptTaskError, RemoteError, StoreError
from kubemap.task.signing import TamperedError
from kubemap.task.timings import SliceTiming

SUMMARY_LIMIT = 4096
CAUSE_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class SliceOutcome:
    """What one run of a slice did. `errors` holds the records written for `failed`."""

    succeeded: IndexRanges = field(default_factory=IndexRanges)
    failed: IndexRanges = field(default_factory=IndexRanges)
    skipped: IndexRanges = field(default_factory=IndexRanges)  # had results (earlier attempt)
    errors: dict[int, RemoteError] = field(default_factory=dict)
    # Left unrun after a failure that decides the task (stop_at_failure) or a Stopped:
    # neither succeeded nor failed, so the planners count them as not run once it ends.
    unrun: IndexRanges = field(default_factory=IndexRanges)
    # The timing record(s) of this run (one per run_slice), also passed to the operator.
    timings: tuple[SliceTiming, ...] = field(default=(), compare=False)


def store_error_code(exc: Exception) -> str:
    """The S3 error code of a store failure ("InvalidAccessKeyId"), from the exception or,
    failing that, from the "(Code: message)" the store puts in its message."""
    code = str(getattr(exc, "code", "") or "")
    if not code:
        found = re.search(r"\(([A-Z][A-Za-z]+):", str(exc))
        code = found.group(1) if found else ""
    return code


def timing_body(timing: SliceTiming) -> dict[str, Any]:
    """The slice's timing record as the operator gets it (in "t" here, in a pool report)."""
    return dict(json.loads(timing.encode()))


def summary_line(outcome: SliceOutcome) -> str:
    """`{"v":1,"succeeded":"0-2,4","failed":"3","t":{...}}`, at most SUMMARY_LIMIT bytes.
    "t" is the slice's timing record (task.timings): the operator's status summary and
    metrics read it here, never the store; it is the first thing dropped if too long."""
    done = outcome.succeeded | outcome.skipped
    full: dict[str, Any] = {"v": 1, "succeeded": str(done), "failed": str(outcome.failed)}
    first = next(iter(sorted(outcome.errors.items())), None)
    if first is not None:  # the operator names it in the task's message: "ValueError: bad 3"
        full["error"] = f"{first[1].type}: {first[1].message}"[:200]
    timed = full | {"t": timing_body(outcome.timings[-1])} if outcome.timings else full
    short = {"v": 1, "failed": str(outcome.failed)}
    for candidate in (timed, full, short, {"v": 1, "truncated": True}):
        line = json.dumps(candidate, separators=(",", ":"))
        if len(line.encode()) <= SUMMARY_LIMIT:
            return line
    raise AssertionError("unreachable")  # pragma: no cover


def infra_cause(exc: StoreError) -> dict[str, str]:
    """The machine-readable why of an infrastructure failure, for the termination message."""
    first_line = (str(exc).splitlines() or [""])[0]
    kind = "corrupt" if isinstance(exc, CorruptTaskError) else "store"
    cause = {
        # "corrupt": no retry cures it (core.plan fails those indices at once); "tampered":
        # the task's files were changed after submission (core.policy stops the task)
        "kind": "tampered" if isinstance(exc, TamperedError) else kind,
        "code": exc.code or store_error_code(exc) or type(exc).__name__,
        "bucket": exc.bucket,
        "message": first_line[:CAUSE_MESSAGE_LIMIT],
    }
    return {key: value for key, value in cause.items() if value}


def infra_line(exc: StoreError) -> str:
    line = {"v": 1, "infra": str(exc)[:2000], "cause": infra_cause(exc)}
    return json.dumps(line, separators=(",", ":"))


def refused_line(reason: str, submitted: str, worker: str) -> str:
    cause = {
        "kind": "version",
        "code": "PythonVersionMismatch",
        "python": submitted,
        "worker": worker,
        "message": reason[:CAUSE_MESSAGE_LIMIT],
    }
    return json.dumps({"v": 1, "refused": reason, "cause": cause}, separators=(",", ":"))
