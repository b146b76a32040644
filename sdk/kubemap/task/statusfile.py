"""status.json: how a run that no API server records (a local run) ended, or that it runs.

The record has the MapTask status's wire shape (phase, counts, conditions with a reason,
message), so `kubemap.core.status.run_status` reads it exactly as it reads a MapTask, and
`MapRun.attach` reports a running, cancelled or failed local task as what it is.

`tally()` is what the SDK's failures(), not_run() and MapTaskError count from: the task's
results and error records, split by `kubemap.core.status.settle` with the backend's record.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from kubemap.contract import STATUS_KEY
from kubemap.core.ranges import IndexRanges
from kubemap.core.status import CONDITION_OF_PHASE, Partition, Phase, RunStatus, settle
from kubemap.errors import RemoteError
from kubemap.stores.base import KeyNotFound, Store
from kubemap.task.data import read_errors
from kubemap.task.results import succeeded_indexes


@dataclass(frozen=True)
class Tally:
    """A run's indices split once (succeeded, failed, not run) and the failure of each
    failed index: what failures(), not_run(), MapTaskError and `kubemap results` report."""

    partition: Partition
    failures: dict[int, RemoteError]


def tally(task: Store, status: RunStatus) -> Tally:
    """The split users read, from the store's results and error records and the status."""
    errors = read_errors(task)
    parts = settle(status, results=succeeded_indexes(task), errors=IndexRanges.of(sorted(errors)))
    failures = {i: errors.get(i) or _unrecorded(i, status) for i in parts.failed}
    return Tally(parts, failures)


def _unrecorded(index: int, status: RunStatus) -> RemoteError:
    """A failure the backend recorded but no worker could write down (a pod lost on every
    attempt, an input that cannot be loaded): explained by the run's own message."""
    why = status.message or f"the run ended {status.phase.value.lower()}"
    return RemoteError(
        index=index,
        type=status.reason.value if status.reason else "Failed",
        message=f"index {index} failed with no error record: {why}",
        traceback="",
        attempts=0,
    )


def write_status(task: Store, status: RunStatus, *, running: bool) -> None:
    record: dict[str, Any] = {
        "phase": status.phase.value,
        "total": status.total,
        "succeeded": status.succeeded,
        "failed": status.failed,
        "active": status.active,
        "notRun": status.not_run,
        "retries": status.retries,
        "message": status.message,
        "conditions": [],
    }
    if status.phase in CONDITION_OF_PHASE and status.reason is not None:
        record["conditions"] = [
            {"type": CONDITION_OF_PHASE[status.phase], "status": "True", "reason": status.reason}
        ]
    if running:  # who runs it: attach tells a live run from one whose process is gone
        record["runner"] = {"host": socket.gethostname(), "pid": os.getpid()}
    task.put(STATUS_KEY, json.dumps(record).encode())


def read_status(task: Store) -> dict[str, Any] | None:
    """The recorded status, with a run whose process is gone on this host shown as such."""
    try:
        record: dict[str, Any] = json.loads(task.get(STATUS_KEY))
    except (KeyNotFound, ValueError):
        return None
    runner = record.get("runner") or {}
    if (
        record.get("phase") in (Phase.RUNNING, Phase.PENDING)
        and runner.get("host") == socket.gethostname()
        and not _alive(int(runner.get("pid") or 0))
    ):
        record["phase"] = Phase.CANCELLED.value
        record["message"] = (
            f"interrupted: the process that ran it (pid {runner.get('pid')}) exited before "
            "it finished"
        )
    return record


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
