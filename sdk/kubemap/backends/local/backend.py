"""The embedded local backend: the run engine's plan executed with processes as its pods.

A driver thread asks `kubemap.core.plan.plan` -- the same function the operator executes
for pods -- what to start, record and conclude; it sends the slices to forked worker
processes (processes.WorkerProcesses) and turns each reply into an attempt for the next plan.
So retries, failure classes, the failure budget, systematic infrastructure failures and
the verdict's message are decided exactly as on a cluster. What is local: slice sizes adapt
to the measured speed (chunking.ChunkPlanner) unless `items_per_pod` is given, retries wait
a shorter backoff (the same curve, base 0.05 s: no pod to schedule), and a worker that dies
inside an automatic slice halves the slice size to find the index at fault.

The final count of successes is read from the store's result objects, never from memory,
and the final status is written to the task's status.json for `MapRun.attach`.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import threading
import weakref
from dataclasses import replace
from datetime import UTC, datetime

from kubemap.backends.base import still_running
from kubemap.backends.local.processes import WARM_WORKERS, Broken, Done, Job, WorkerProcesses
from kubemap.contract import EXIT_INFRA_ERROR, EXIT_OK, EXIT_USER_ERROR
from kubemap.core.attempts import Attempt, AttemptState, Report
from kubemap.core.parallelism import default_parallelism
from kubemap.core.plan import Decision, Recorded, Rules, Verdict, plan
from kubemap.core.policy import Cause, FailureBudget, decisive_failure
from kubemap.core.ranges import IndexRanges
from kubemap.core.slicing import ChunkPlanner, worker_count
from kubemap.core.status import Phase, Reason, RunStatus, outcome_message, restate_counts
from kubemap.errors import StoreError
from kubemap.resources.options import RunOptions
from kubemap.runtime.worker import record_infra_failure
from kubemap.stores.base import Store
from kubemap.task.data import succeeded_indexes, write_error
from kubemap.task.statusfile import tally, write_status

LOCAL_BACKOFF_BASE = 0.05  # the core's retry curve, scaled: 0.05 s, 0.1 s, ... at most 1.8 s
IDLE_TICK = 0.5  # the driver wakes at least this often (deadline, retries)
MAX_CRASH_SPLITS = 64  # a crashed worker's automatic slice size is halved at most this often

_active_runs: weakref.WeakSet[LocalRun] = weakref.WeakSet()
_run_ids = itertools.count()


class LocalBackend:
    """Runs tasks in worker processes on this machine."""

    name = "local"

    def discover(self, options: RunOptions) -> Store | None:
        """No install to ask: the caller's store, or the default one."""
        return None

    def preflight(self, store_url: str, options: RunOptions) -> None:
        """Any store works locally: nothing to check before the upload."""

    def start(self, task: Store, total: int, options: RunOptions, name: str) -> LocalRun:
        run = LocalRun(task, total, options, name)
        run.start()
        return run

    def retry(
        self, task: Store, total: int, options: RunOptions, name: str, succeeded: IndexRanges
    ) -> LocalRun:
        """A new run of the task whose plan starts with `succeeded` recorded: it runs only
        the other indices, with fresh attempts (and so fresh retry budgets)."""
        run = LocalRun(task, total, options, name, succeeded=succeeded)
        run.start()
        return run


class LocalRun:
    """One local run; a RunHandle (see kubemap.backends.base)."""

    def __init__(
        self,
        task: Store,
        total: int,
        options: RunOptions,
        name: str,
        *,
        succeeded: IndexRanges | None = None,
    ) -> None:
        self.task = task
        self._already = succeeded or IndexRanges()  # recorded before this run (a retry)
        self.total = total
        self.name = name
        self.options = options
        self.parallelism = options.parallelism or default_parallelism(cpus=os.cpu_count() or 1)
        self._chunks = ChunkPlanner(total, self.parallelism, options.items_per_pod)
        self._size_cap: int | None = None  # lowered when a worker dies in an automatic slice
        self._crash_splits = 0
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._cancel = threading.Event()
        self._recorded = Recorded()
        self._attempts: dict[str, Attempt] = {}
        self._names = itertools.count()
        self._run_id = f"{os.getpid()}-{next(_run_ids)}"  # new per run: warm workers reload fn
        self._retries = 0
        # The plan's failure budget: with none, a failure on an index's last attempt ends
        # the run, and its worker leaves the rest of that slice unrun (fail-fast).
        self._allowed_failures = FailureBudget.of(
            total, min_success_ratio=options.min_success_ratio
        ).allowed
        self._status = RunStatus(phase=Phase.PENDING, total=total)
        self._workers: WorkerProcesses | None = None
        self._thread: threading.Thread | None = None
        self._wake_r: int | None = None
        self._wake_w: int | None = None

    # -- RunHandle -------------------------------------------------------------------
    def status(self) -> RunStatus:
        with self._lock:
            return self._status

    def wait(self, timeout: float | None = None) -> RunStatus:
        if not self._finished.wait(timeout):
            raise still_running(self.name, self.status(), timeout)
        return self.status()

    def done(self) -> bool:
        return self._finished.is_set()

    def cancel(self) -> bool:
        if self._finished.is_set():
            return False
        self._cancel.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._finished.wait(10.0)
        return True

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._started = datetime.now(UTC)
        self._recorded = Recorded(succeeded=self._already, started_at=self._started)
        if self.total == 0:
            self._conclude(Verdict(Phase.SUCCEEDED, Reason.COMPLETED, "0 succeeded"))
            self._finished.set()
            return
        # Fork (or take warm) workers here, in the caller's thread, before this run starts one.
        self._workers = WARM_WORKERS.acquire(
            worker_count(self.total, self.parallelism, self.options.items_per_pod)
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._set_status(RunStatus(phase=Phase.RUNNING, total=self.total))
        write_status(self.task, self.status(), running=True)
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
        assert self._workers is not None
        workers = self._workers
        try:
            verdict = self._loop(workers)
        except BaseException as exc:  # a bug or a broken store: never leave waiters hanging
            workers.kill()
            verdict = Verdict(Phase.FAILED, Reason.INFRASTRUCTURE, f"local backend failed: {exc}")
        try:
            self._conclude(verdict)
        except BaseException as exc:
            self._set_status(
                RunStatus(
                    phase=Phase.FAILED,
                    total=self.total,
                    failed=len(self._recorded.failed),
                    reason=Reason.INFRASTRUCTURE,
                    message=f"could not read the results of task {self.name} in "
                    f"{self.task.url}: {exc}",
                )
            )
        finally:
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    os.close(fd)
            self._wake_r = self._wake_w = None
            _active_runs.discard(self)
            self._finished.set()

    def _rules(self) -> Rules:
        size = self._chunks.size_for_next() or 1
        if self._size_cap is not None:
            size = min(size, self._size_cap)
        return Rules(
            total=self.total,
            items_per_slice=size,
            parallelism=self._workers.size if self._workers else self.parallelism,
            retries=self.options.retries,
            min_success_ratio=self.options.min_success_ratio,
            deadline_seconds=self.options.timeout,
            cancelled=self._cancel.is_set(),
            backoff_base_seconds=LOCAL_BACKOFF_BASE,
        )

    def _loop(self, workers: WorkerProcesses) -> Verdict:
        """Plan, start what the plan says, wait for replies; until the plan's verdict."""
        while True:
            now = datetime.now(UTC)
            decision = plan(self._rules(), self._recorded, list(self._attempts.values()), now)
            self._record(decision)
            if decision.verdict is not None:
                # A success leaves idle workers: the next run in this process takes them.
                if decision.verdict.phase is Phase.SUCCEEDED:
                    WARM_WORKERS.release(workers)
                else:
                    workers.kill()
                return decision.verdict
            self._start(workers, decision)
            self._publish()
            wait_for = IDLE_TICK if decision.next_due is None else min(IDLE_TICK, decision.next_due)
            assert self._wake_r is not None
            events = workers.poll(max(0.0, wait_for), extra=[self._wake_r])  # type: ignore[list-item]
            self._drain_wake()
            for event in events:
                self._observe(event)

    def _record(self, decision: Decision) -> None:
        self._recorded = Recorded(decision.succeeded, decision.failed, self._recorded.started_at)
        unrecorded = {one.name for one, mine in decision.spans if mine}
        for name, one in list(self._attempts.items()):
            finished = one.state is not AttemptState.ACTIVE
            if finished and name not in decision.kept and name not in unrecorded:
                del self._attempts[name]  # its outcome is recorded: nothing left to keep

    def _start(self, workers: WorkerProcesses, decision: Decision) -> None:
        idle = workers.idle()
        for request, worker in zip(decision.start, idle, strict=False):
            name = f"{request.start}-{request.attempt}-{next(self._names)}"
            workers.send(
                worker,
                Job(
                    self.task.url,
                    request.start,
                    request.count,
                    request.attempt,
                    name,
                    run=self._run_id,
                    stop_at_failure=decisive_failure(
                        allowed_failures=self._allowed_failures,
                        retries=self.options.retries,
                        failures=request.failures,
                    ),
                ),
            )
            self._attempts[name] = Attempt.started(request, name)
            if request.attempt == 0:
                self._chunks.next_start = max(
                    self._chunks.next_start, request.start + request.count
                )
            else:
                self._retries += 1

    def _drain_wake(self) -> None:
        if self._wake_r is None:
            return
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    def _observe(self, event: Done | Broken) -> None:
        """A worker's reply becomes the finished state of its attempt."""
        job = event.job
        one = self._attempts.get(job.name)
        if one is None:
            return
        now = datetime.now(UTC)
        if isinstance(event, Done):
            if job.attempt == 0:
                self._chunks.observe(job.count, event.seconds)
            failed = bool(event.failed)
            report = Report(event.succeeded | event.skipped, event.failed, error=event.error)
            self._attempts[job.name] = replace(
                one,
                state=AttemptState.FAILED if failed else AttemptState.SUCCEEDED,
                exit_code=EXIT_USER_ERROR if failed else EXIT_OK,
                report=report,
                finished_at=now,
            )
            return
        if event.exitcode is None:  # the store or the task broke, not the user's function
            cause = Cause(event.kind, event.code, event.message[:300])
            record_infra_failure(
                self.task, job.start, job.count, StoreError(event.message), job.attempt
            )
            self._attempts[job.name] = replace(
                one,
                state=AttemptState.FAILED,
                exit_code=EXIT_INFRA_ERROR,
                report=Report(cause=cause),
                finished_at=now,
            )
            return
        # The worker process died inside the user's function (os._exit, segfault, OOM kill).
        if (
            job.count > 1
            and self.options.items_per_pod is None
            and self._crash_splits < MAX_CRASH_SPLITS
        ):
            # An automatic slice is a local detail: forget the attempt (its indices are
            # planned again) and halve the slice size to find the index at fault.
            self._crash_splits += 1
            self._size_cap = max(1, job.count // 2)
            del self._attempts[job.name]
            return
        message = f"{event.message} while running indices {job.start}-{job.start + job.count - 1}"
        if one.failures + 1 > self.options.retries:
            for index in range(job.start, job.start + job.count):
                write_error(
                    self.task,
                    index,
                    {
                        "type": "WorkerDied",
                        "message": message,
                        "traceback": "",
                        "attempt": job.attempt,
                    },
                )
        self._attempts[job.name] = replace(
            one,
            state=AttemptState.FAILED,
            exit_code=event.exitcode,
            report=Report(failed=one.span, error=f"WorkerDied: {message}"),
            finished_at=now,
        )

    def _publish(self) -> None:
        active = sum(a.count for a in self._attempts.values() if a.state is AttemptState.ACTIVE)
        self._set_status(
            RunStatus(
                phase=Phase.RUNNING,
                total=self.total,
                succeeded=len(self._recorded.succeeded),
                failed=len(self._recorded.failed),
                active=active,
                retries=self._retries,
            )
        )

    def _conclude(self, verdict: Verdict) -> None:
        """Final status: successes counted from the store's result objects."""
        done = succeeded_indexes(self.task) & IndexRanges.span(0, self.total)
        failed = self._recorded.failed - done
        phase, reason, message = verdict.phase, verdict.reason, verdict.message
        if phase is not Phase.SUCCEEDED:
            # Its workers are dead (workers.kill waits for them): the store is final, and a
            # slice that ended after the verdict left its records there. Count as the SDK's
            # failures() and not_run() do (kubemap.task.statusfile.tally), with the same counts
            # in the message.
            stored = tally(self.task, RunStatus(Phase.FAILED, self.total)).partition
            done, failed = stored.succeeded, (failed | stored.failed) - stored.succeeded
            message = restate_counts(
                message, total=self.total, succeeded=len(done), failed=len(failed)
            )
        if phase is Phase.SUCCEEDED and len(done) + len(failed) < self.total:
            # The plan saw successes whose results are not in the store: never hide that.
            missing = IndexRanges.span(0, self.total) - done - failed
            failed = failed | missing
            phase, reason = Phase.FAILED, Reason.FAILED_INDEXES
            message = outcome_message(
                phase,
                total=self.total,
                succeeded=len(done),
                failed=len(failed),
                why=f"{len(missing)} results are missing from {self.task.url}",
            )
        status = RunStatus(
            phase=phase,
            total=self.total,
            succeeded=len(done),
            failed=len(failed),
            reason=reason,
            message=message,
            retries=self._retries,
        )
        self._set_status(status)
        write_status(self.task, status, running=False)


@atexit.register
def _stop_active_runs() -> None:
    """A local run lives in this process: stop its workers when the process exits."""
    for run in list(_active_runs):
        run.cancel()
