"""The embedded local backend: the same worker code path over the same store layout, on a
process pool of this machine capped at `parallelism` (default: the number of CPUs).

A driver thread hands slices to workers (chunking.ChunkPlanner), retries failed indices
up to `retries` more times with a short backoff, fails fast once more indices failed for
good than `min_success_ratio` allows (kubemap.policy.FailureBudget, as the operator does),
and stops everything at `timeout`. What finished stays in the store. The final count of
successes is read from the store's result objects, never from memory, so an index whose
result is missing is never reported as a success.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref
from dataclasses import dataclass

from kubemap.backend import (
    REASON_CANCELLED,
    REASON_DEADLINE,
    REASON_FAILED_INDEXES,
    REASON_INFRASTRUCTURE,
    RunStatus,
)
from kubemap.chunking import ChunkPlanner, worker_count
from kubemap.localpool import Broken, Done, Job, WorkerPool
from kubemap.models import Phase, RunOptions
from kubemap.policy import INFRA_RETRY_LIMIT, FailureBudget
from kubemap.ranges import IndexRanges
from kubemap.store import Store
from kubemap.taskdata import succeeded_indexes, write_error

# Locally a retry needs no new pod, so the backoff is short: 0.05 s, 0.1 s ... at most 1 s.
LOCAL_BACKOFF_BASE = 0.05
LOCAL_BACKOFF_MAX = 1.0
# The driver wakes at least this often even when nothing happens (deadline, retries).
IDLE_TICK = 0.5
# A crashed worker's automatic slice is halved at most this many times per run.
MAX_CRASH_SPLITS = 64

_active_runs: weakref.WeakSet[LocalRun] = weakref.WeakSet()


def local_backoff(failures_so_far: int) -> float:
    if failures_so_far <= 0:
        return 0.0
    return float(min(LOCAL_BACKOFF_MAX, LOCAL_BACKOFF_BASE * 2 ** (failures_so_far - 1)))


def default_parallelism() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class _Retry:
    ready_at: float
    job: Job


class LocalBackend:
    """Runs tasks in worker processes on this machine."""

    name = "local"

    def preflight(self, store_url: str, options: RunOptions) -> None:
        """Any store works locally: nothing to check before the upload."""

    def start(self, task: Store, total: int, options: RunOptions, name: str) -> LocalRun:
        run = LocalRun(task, total, options, name)
        run.start()
        return run


class LocalRun:
    """One local run; a RunHandle (see kubemap.backend)."""

    def __init__(self, task: Store, total: int, options: RunOptions, name: str) -> None:
        self.task = task
        self.total = total
        self.name = name
        self.options = options
        self.parallelism = options.parallelism or default_parallelism()
        self._planner = ChunkPlanner(total, self.parallelism, options.items_per_pod)
        self._budget = FailureBudget.of(total, min_success_ratio=options.min_success_ratio)
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._cancel = threading.Event()
        self._retries: list[_Retry] = []
        self._infra_failures: dict[tuple[int, int], int] = {}
        self._crash_splits = 0
        self._succeeded = 0
        self._failed = IndexRanges()
        self._status = RunStatus(phase=Phase.PENDING, total=total)
        self._pool: WorkerPool | None = None
        self._thread: threading.Thread | None = None
        self._wake_r: int | None = None
        self._wake_w: int | None = None

    # -- RunHandle -------------------------------------------------------------------
    def status(self) -> RunStatus:
        with self._lock:
            return self._status

    def wait(self, timeout: float | None = None) -> RunStatus:
        self._finished.wait(timeout)
        return self.status()

    def cancel(self) -> None:
        self._cancel.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._finished.wait(10.0)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self.total == 0:
            self._set_status(RunStatus(phase=Phase.SUCCEEDED, total=0))
            self._finished.set()
            return
        # Fork the workers here, in the caller's thread, before this run starts a thread.
        self._pool = WorkerPool(
            worker_count(self.total, self.parallelism, self.options.items_per_pod)
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._started_at = time.monotonic()
        self._set_status(RunStatus(phase=Phase.RUNNING, total=self.total))
        _active_runs.add(self)
        self._thread = threading.Thread(
            target=self._drive, name=f"kubemap-local-{self.name}", daemon=True
        )
        self._thread.start()

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _set_status(self, status: RunStatus) -> None:
        with self._lock:
            self._status = status

    def _drive(self) -> None:
        assert self._pool is not None
        pool = self._pool
        try:
            outcome = self._loop(pool)
        except BaseException as exc:  # a bug or a broken store: never leave waiters hanging
            pool.kill()
            outcome = (Phase.FAILED, REASON_INFRASTRUCTURE, f"local backend failed: {exc}")
        try:
            self._conclude(*outcome)
        except BaseException as exc:
            self._set_status(
                RunStatus(
                    phase=Phase.FAILED,
                    total=self.total,
                    failed=len(self._failed),
                    reason=REASON_INFRASTRUCTURE,
                    message=f"could not read the results of task {self.name} in {self.task.url}: {exc}",
                )
            )
        finally:
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    os.close(fd)
            self._wake_r = self._wake_w = None
            _active_runs.discard(self)
            self._finished.set()

    def _loop(self, pool: WorkerPool) -> tuple[Phase, str | None, str | None]:
        """Run until done or stopped; return (phase, reason, message) for a stopped run,
        or (SUCCEEDED, None, None) when every index was tried (the store decides)."""
        timeout = self.options.timeout
        deadline = None if timeout is None else self._started_at + timeout
        while True:
            if self._cancel.is_set():
                pool.kill()
                return Phase.CANCELLED, REASON_CANCELLED, f"task {self.name} was cancelled"
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                pool.kill()
                return (
                    Phase.FAILED,
                    REASON_DEADLINE,
                    f"task {self.name} did not finish within timeout={timeout:g}s",
                )
            for worker in pool.idle():
                job = self._next_job(now)
                if job is None:
                    break
                pool.send(worker, job)
            self._publish(pool)
            if pool.busy == 0 and not self._retries and self._planner.exhausted:
                pool.close()
                return Phase.SUCCEEDED, None, None
            wake_at = [now + IDLE_TICK]
            if deadline is not None:
                wake_at.append(deadline)
            if self._retries and pool.idle():
                wake_at.append(min(r.ready_at for r in self._retries))
            wait_for = max(0.0, min(wake_at) - now)
            assert self._wake_r is not None
            events = pool.poll(wait_for, extra=[self._wake_r])  # type: ignore[list-item]
            self._drain_wake()
            for event in events:
                stop = self._handle(event)
                if stop is not None:
                    pool.kill()
                    return stop

    def _drain_wake(self) -> None:
        if self._wake_r is None:
            return
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    def _next_job(self, now: float) -> Job | None:
        for i, retry in enumerate(self._retries):
            if retry.ready_at <= now:
                del self._retries[i]
                return retry.job
        fresh = self._planner.next()
        if fresh is None:
            return None
        return Job(self.task.url, fresh[0], fresh[1], 0)

    def _handle(self, event: Done | Broken) -> tuple[Phase, str | None, str | None] | None:
        job = event.job
        if isinstance(event, Done):
            self._succeeded += len(event.succeeded) + len(event.skipped)
            if job.attempt == 0:
                self._planner.observe(job.count, event.seconds)
            return self._failed_indices(job, event.failed)
        if event.exitcode is None:  # the store or the task broke, not the user's function
            key = (job.start, job.count)
            self._infra_failures[key] = tries = self._infra_failures.get(key, 0) + 1
            if tries > INFRA_RETRY_LIMIT:
                return (
                    Phase.FAILED,
                    REASON_INFRASTRUCTURE,
                    f"indices {job.start}-{job.start + job.count - 1} of task {self.name} could "
                    f"not run {tries} times: {event.message}",
                )
            self._retries.append(_Retry(time.monotonic() + local_backoff(tries), job))
            return None
        # The worker process died inside the user's function (os._exit, segfault, OOM kill).
        # An automatic slice is a local detail, so halve it to find the index at fault
        # (bounded); a slice of one index, or of items_per_pod, is a failed pod and spends
        # its retries, as on a cluster.
        if (
            job.count > 1
            and self.options.items_per_pod is None
            and self._crash_splits < MAX_CRASH_SPLITS
        ):
            self._crash_splits += 1
            half = job.count // 2
            for start, count in ((job.start, half), (job.start + half, job.count - half)):
                self._retries.append(_Retry(0.0, Job(job.task_url, start, count, job.attempt)))
            return None
        failed = IndexRanges.span(job.start, job.start + job.count)
        if job.attempt >= self.options.retries:
            for index in failed:
                write_error(
                    self.task,
                    index,
                    {
                        "index": index,
                        "type": "WorkerDied",
                        "message": f"{event.message} while running indices "
                        f"{job.start}-{job.start + job.count - 1}",
                        "traceback": "",
                        "attempt": job.attempt,
                    },
                )
        return self._failed_indices(job, failed)

    def _failed_indices(
        self, job: Job, failed: IndexRanges
    ) -> tuple[Phase, str | None, str | None] | None:
        if not failed:
            return None
        if job.attempt < self.options.retries:
            ready = time.monotonic() + local_backoff(job.attempt + 1)
            for lo, hi in failed.intervals:
                self._retries.append(_Retry(ready, Job(job.task_url, lo, hi - lo, job.attempt + 1)))
            return None
        self._failed = self._failed | failed
        if self._budget.exceeded(len(self._failed)):
            return (
                Phase.FAILED,
                REASON_FAILED_INDEXES,
                f"{len(self._failed)} of {self.total} inputs failed, more than "
                f"min_success_ratio={self.options.min_success_ratio:g} allows",
            )
        return None

    def _publish(self, pool: WorkerPool) -> None:
        active = sum(job.count for job in pool.running())
        self._set_status(
            RunStatus(
                phase=Phase.RUNNING,
                total=self.total,
                succeeded=self._succeeded,
                failed=len(self._failed),
                active=active,
            )
        )

    def _conclude(self, phase: Phase, reason: str | None, message: str | None) -> None:
        """Final status: successes counted from the store's result objects."""
        done = succeeded_indexes(self.task) & IndexRanges.span(0, self.total)
        succeeded = len(done)
        if phase is Phase.SUCCEEDED:
            missing = self.total - succeeded
            if self._budget.exceeded(missing):
                phase, reason = Phase.FAILED, REASON_FAILED_INDEXES
                message = f"{missing} of {self.total} inputs failed"
            failed = missing
        else:
            failed = len(self._failed - done)
        self._set_status(
            RunStatus(
                phase=phase,
                total=self.total,
                succeeded=succeeded,
                failed=failed,
                active=0,
                reason=reason,
                message=message,
            )
        )


@atexit.register
def _stop_active_runs() -> None:
    """A local run lives in this process: stop its workers when the process exits."""
    for run in list(_active_runs):
        run.cancel()
