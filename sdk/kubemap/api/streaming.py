"""Results as they land: MapRun.as_completed() (and kubemap.imap() over it), return_exceptions.

    for index, value in run.as_completed(): ...            # as slices finish
    for value in kubemap.imap(fn, inputs): ...             # in input order, streamed

Both read the store's write-once result objects as they appear, the same way on every
backend, and hold only what they have not handed out yet: the indices delivered so far
(compressed ranges), the result objects read while they are still partly new, and for
ordered imap the results that finished ahead of the first one still missing. Nothing
grows with the number of inputs, so a 1,000,000-item run streams in constant memory.

A listing starts just below the first index not yet delivered (result keys sort by their
first index), so a poll late in a long run does not re-list what was read long ago.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from kubemap.contract import RESULTS_PREFIX, parse_result_key, result_key
from kubemap.core.ranges import IndexRanges
from kubemap.errors import MapTaskError, RemoteError, TimeoutError
from kubemap.stores import KeyNotFound, Store
from kubemap.task.data import decode_results
from kubemap.task.signing import Signer

if TYPE_CHECKING:
    from kubemap.backends import RunHandle
    from kubemap.core.status import RunStatus

__all__ = ["NOT_RUN", "FollowedRun", "ResultFeed", "as_completed", "fill_missing", "not_run_error"]


class FollowedRun(Protocol):
    """What as_completed follows: a MapRun (kept apart so that this module needs no MapRun)."""

    @property
    def name(self) -> str: ...
    @property
    def total(self) -> int: ...
    @property
    def store_url(self) -> str: ...
    @property
    def task_store(self) -> Store: ...
    @property
    def signer(self) -> Signer | None: ...
    @property
    def handle(self) -> RunHandle: ...
    def status(self) -> RunStatus: ...
    def wait(self, timeout: float | None = None, progress: bool | None = None) -> RunStatus: ...
    def failures(self) -> dict[int, RemoteError]: ...
    def raise_for_status(self, status: RunStatus) -> None: ...


FIRST_POLL = 0.02  # seconds between polls right after something arrived
MAX_POLL = 1.0  # ... growing to this while nothing does


class ResultFeed:
    """New (index, value) pairs of a task's result objects, each index once."""

    def __init__(self, task: Store, total: int, signer: Signer | None = None) -> None:
        self.task = task
        self.signer = signer  # a signed task's objects are checked before unpickling
        self.total = total
        self.delivered = IndexRanges()
        self._read: set[str] = set()  # objects read that still cover undelivered indices
        self._widest = 1  # the largest count in a result key seen so far

    def frontier(self) -> int:
        """The first index not delivered yet."""
        intervals = self.delivered.intervals
        return intervals[0][1] if intervals and intervals[0][0] == 0 else 0

    def poll(self) -> Iterator[tuple[int, Any]]:
        low = max(0, self.frontier() - self._widest + 1)
        start_after = result_key(low, 1).rsplit("-", 1)[0] if low else ""
        for obj in self.task.iter_objects(RESULTS_PREFIX, start_after=start_after):
            name = obj.key[len(RESULTS_PREFIX) :]
            if "/" in name or obj.key in self._read:
                continue
            try:
                start, count = parse_result_key(obj.key)
            except ValueError:
                continue  # not a result object
            self._widest = max(self._widest, count)
            if not IndexRanges.span(start, start + count) - self.delivered:
                continue  # every index it can hold was delivered from another object
            try:
                data = self.task.get(obj.key)
            except KeyNotFound:
                continue  # deleted meanwhile
            ranges, values = decode_results(
                data, f"{self.task.url}/{obj.key}", self.signer, obj.key
            )
            new = ranges - self.delivered
            if new:
                for index, value in zip(ranges, values, strict=True):
                    if index in new and index < self.total:
                        yield index, value
                self.delivered = self.delivered | new
            self._read.add(obj.key)
        # forget objects whose whole span is delivered: the listing skips them by name
        self._read = {
            key
            for key in self._read
            if IndexRanges.span(*_span(key)) - self.delivered  # still partly open
        }


def _span(key: str) -> tuple[int, int]:
    start, count = parse_result_key(key)
    return start, start + count


NOT_RUN = "NotRun"  # the type of the RemoteError given for an index that never ran


def not_run_error(index: int, status: RunStatus) -> RemoteError:
    why = status.message or f"the run ended {status.phase.value.lower()}"
    return RemoteError(
        index=index,
        type=NOT_RUN,
        message=f"index {index} has no result: {why}",
        traceback="",
        attempts=0,
    )


def fill_missing(
    run: FollowedRun, status: RunStatus, missing: IndexRanges
) -> Iterator[tuple[int, RemoteError]]:
    """A RemoteError for each index without a result: its failure, or why it never ran."""
    failures = run.failures() if missing else {}
    for index in missing:
        yield index, failures.get(index) or not_run_error(index, status)


def as_completed(
    run: FollowedRun, *, return_exceptions: bool = False, timeout: float | None = None
) -> Iterator[tuple[int, Any]]:
    """(index, result) pairs as result objects appear, until the run finishes.

    Every index comes out exactly once, as its result or as its exception. At the end, the
    indices without a result are yielded with their RemoteError (return_exceptions=True),
    or raise together (MapTaskError, TimeoutError, CancelledError), as results() raises;
    also when the run tolerated them (min_success_ratio < 1), where results() would return
    None in their places: an iterator of results has no None to give, and leaving them
    out would hide them. `timeout` bounds the whole wait (kubemap.TimeoutError; the run
    goes on).
    """
    feed = ResultFeed(run.task_store, run.total, run.signer)
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = FIRST_POLL
    while True:
        status = run.status()  # before the listing: a finished run's results are all in
        arrived = False
        for pair in feed.poll():
            arrived = True
            yield pair
        if status.finished:
            break
        if deadline is not None and time.monotonic() >= deadline:
            run.wait(0.0, progress=False)  # raises kubemap.TimeoutError with the counts
        pause = FIRST_POLL if arrived else min(MAX_POLL, pause * 1.5)
        if deadline is not None:
            pause = max(0.0, min(pause, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            run.handle.wait(pause)  # returns early when a local run finishes
    missing = IndexRanges.span(0, run.total) - feed.delivered
    if not missing:
        return
    if return_exceptions:
        yield from fill_missing(run, status, missing)
        return
    run.raise_for_status(status)
    # The status says every index succeeded, yet results are missing from the store
    # (deleted meanwhile): still no index may be left out in silence.
    failures = run.failures()
    raise MapTaskError(
        {i: e for i, e in failures.items() if i in missing},
        total=run.total,
        name=run.name,
        not_run=IndexRanges.of(i for i in missing if i not in failures),
        succeeded=len(feed.delivered),
        why=f"{len(missing)} results are missing from {run.store_url}",
    )
