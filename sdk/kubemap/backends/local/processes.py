"""The local backend's worker processes: one pipe per worker, kill on demand.

Why not concurrent.futures or multiprocessing.Pool: the local backend must stop running
work on a timeout or cancel (neither can kill a running task), must know which slice a
crashed worker was running (Pool hangs, ProcessPoolExecutor breaks as a whole), and
must not re-import the user's __main__ in every worker (spawn/forkserver do, so a script
without an `if __name__ == "__main__"` guard would recurse).

Workers are forked (Linux) from the thread that starts the run, before the run starts any
thread of its own (a worker that dies is replaced from the run's driver thread); they
ignore SIGINT so Ctrl-C reaches only the parent, which cancels. Elsewhere they are spawned,
and a script needs the usual `if __name__ == "__main__":` guard.
Each worker keeps the task's function loaded across slices: fn.pkl is read once per
worker process, not once per slice.

Between runs the workers stay warm (WarmWorkers): the next `kubemap.map` in this process
takes the same worker processes instead of forking new ones, as a warm WorkerPool does on a
cluster. So, as on a cluster, a worker runs the function as pickled (by value from
__main__, by reference from modules imported in the worker): module globals the caller
changes after the workers started are not seen by them. Workers are not reused when sys.path
changed since its workers were forked (they could not import what the caller now can), nor
when os.environ (credentials) or the working directory changed, nor in a forked child of its
owner, nor after a run killed its workers (cancel, failure, timeout).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

# Imported in the parent, before any fork, so that no worker pays for the imports again.
from kubemap.core.ranges import IndexRanges
from kubemap.errors import CorruptTaskError
from kubemap.resources.termination import store_error_code
from kubemap.runtime.worker import run_slice
from kubemap.stores import open_store
from kubemap.task.data import read_function


@dataclass(frozen=True)
class Job:
    """One slice of a task to run: indices [start, start+count), its attempt number, and
    the name of the attempt it is in the run engine's plan."""

    task_url: str
    start: int
    count: int
    attempt: int = 0
    name: str = ""
    # The run it belongs to: a warm worker reloads fn.pkl for a new run of the same task,
    # whose function MapRun.retry(fn=...) may have replaced.
    run: str = ""
    # A failure in this job decides the run (core.policy.decisive_failure): stop the slice there.
    stop_at_failure: bool = False


@dataclass(frozen=True)
class Done:
    """A worker ran a job: which indices succeeded, failed (error records written), or
    were already done."""

    job: Job
    succeeded: IndexRanges
    failed: IndexRanges
    skipped: IndexRanges
    seconds: float
    error: str | None = None  # the first user error, "Type: message"


@dataclass(frozen=True)
class Broken:
    """A job could not run for a reason that is not the user's function: the store failed,
    the task is corrupt, or the worker process died (exitcode set)."""

    job: Job
    message: str
    exitcode: int | None = None
    code: str = ""  # the store's error code (e.g. InvalidAccessKeyId), when it gave one
    kind: str = "store"  # "corrupt": the task's data cannot be loaded (no retry cures it)


Event = Done | Broken


def _serve(conn: Connection) -> None:
    """Worker process main loop: receive a Job, run it, send back a small reply."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cached_key: tuple[str, str] | None = None
    cached: tuple[Any, Callable[..., Any]] | None = None
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        began = time.perf_counter()
        try:
            if cached is None or cached_key != (job.task_url, job.run):
                store = open_store(job.task_url)
                cached, cached_key = (store, read_function(store)), (job.task_url, job.run)
            store, fn = cached
            outcome = run_slice(
                store,
                job.start,
                job.count,
                fn=fn,
                attempt=job.attempt,
                skip_done=job.attempt > 0,
                stop_at_failure=job.stop_at_failure,
            )
            first = next(iter(outcome.errors.values()), None)
            reply: tuple[Any, ...] = (
                "done",
                outcome.succeeded,
                outcome.failed,
                outcome.skipped,
                time.perf_counter() - began,
                f"{first.type}: {first.message}"[:300] if first is not None else None,
            )
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            kind = "corrupt" if isinstance(exc, CorruptTaskError) else "store"
            reply = ("broken", detail, store_error_code(exc), kind)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def _fingerprint() -> tuple[object, ...]:
    """What forked workers inherit and a later run may have changed: the environment (S3
    credentials set after the first call), sys.path and the working directory."""
    return (tuple(sorted(os.environ.items())), tuple(sys.path), os.getcwd())


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    job: Job | None = None
    sent_at: float = 0.0


@dataclass
class WorkerProcesses:
    """`size` forked worker processes; send jobs to idle ones, poll for events."""

    size: int
    _workers: list[_Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        # fork on Linux (fast, no re-import of __main__); elsewhere fork is unsafe (macOS
        # system libraries) or missing, and spawn needs the script's __main__ guard.
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        self._ctx: Any = multiprocessing.get_context(method)
        self._owner = os.getpid()
        self._fingerprint = _fingerprint()
        self.stopped = False
        self._workers = [self._spawn() for _ in range(self.size)]

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def owned_here(self) -> bool:
        """Forked by this process (not inherited by a forked child of it)."""
        return self._owner == os.getpid()

    def reusable(self) -> bool:
        """Fit for another run: not stopped, ours (not a forked child's), same environment."""
        return (
            not self.stopped
            and self.owned_here()
            and self._fingerprint == _fingerprint()
            and self.busy == 0
        )

    def refit(self, size: int) -> None:
        """Replace workers that died while idle, then grow or shrink to `size`."""
        for i, worker in enumerate(self._workers):
            if not worker.process.is_alive():
                worker.process.join(0.1)
                worker.conn.close()
                self._workers[i] = self._spawn()
        while len(self._workers) < size:
            self._workers.append(self._spawn())
        surplus, self._workers = self._workers[size:], self._workers[:size]
        self.size = size
        for worker in surplus:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in surplus:
            worker.process.join(1.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1.0)
            worker.conn.close()

    def _spawn(self) -> _Worker:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_serve, args=(child_end,), name="kubemap-local-worker", daemon=True
        )
        process.start()
        child_end.close()
        return _Worker(process=process, conn=parent_end)

    @property
    def busy(self) -> int:
        return sum(1 for w in self._workers if w.job is not None)

    def idle(self) -> list[_Worker]:
        return [w for w in self._workers if w.job is None]

    def running(self) -> list[Job]:
        return [w.job for w in self._workers if w.job is not None]

    def send(self, worker: _Worker, job: Job) -> None:
        worker.job = job
        worker.sent_at = time.perf_counter()
        worker.conn.send(job)

    def poll(self, timeout: float | None, extra: list[Connection] | None = None) -> list[Event]:
        """Wait up to `timeout` for replies or dead workers (which are replaced)."""
        waitables: list[Any] = [w.conn for w in self._workers if w.job is not None]
        waitables += [w.process.sentinel for w in self._workers]
        waitables += extra or []
        ready = set(wait(waitables, timeout))
        events: list[Event] = []
        for i, worker in enumerate(self._workers):
            job = worker.job
            if job is not None and worker.conn in ready:
                try:
                    reply = worker.conn.recv()
                except (EOFError, OSError):
                    reply = None
                if reply is not None:
                    worker.job = None
                    if reply[0] == "done":
                        events.append(Done(job, *reply[1:]))
                    else:
                        events.append(Broken(job, reply[1], code=reply[2], kind=reply[3]))
                    continue
            if worker.process.sentinel in ready or not worker.process.is_alive():
                worker.process.join(0.1)
                code = worker.process.exitcode
                if job is not None and worker.job is not None:
                    events.append(
                        Broken(job, f"worker process died with exit code {code}", exitcode=code)
                    )
                worker.conn.close()
                self._workers[i] = self._spawn()
        return events

    def close(self, grace: float = 2.0) -> None:
        """Ask idle workers to exit, then stop whatever is left."""
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + grace
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        """Stop every worker now (running jobs are lost; their results were never written)."""
        self.stopped = True
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in self._workers:
            worker.process.join(1.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1.0)
            worker.conn.close()
            worker.job = None


class WarmWorkers:
    """The worker processes kept between local runs of this process: one idle set at most.

    A run takes them (growing or shrinking them to its size) or, when another run holds
    them or they are unfit, gets new ones; a run that succeeded hands its workers back, a
    run that ended otherwise kills them (they may still run its slices). Closed at exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: WorkerProcesses | None = None
        self.created = 0  # sets of workers forked (tests count them)

    def acquire(self, size: int) -> WorkerProcesses:
        with self._lock:
            workers, self._idle = self._idle, None
        if workers is not None and workers.reusable():
            workers.refit(size)
            return workers
        if workers is not None and workers.owned_here():
            workers.kill()
        self.created += 1
        return WorkerProcesses(size)

    def release(self, workers: WorkerProcesses) -> None:
        if not workers.reusable():
            workers.kill()
            return
        with self._lock:
            old, self._idle = self._idle, workers
        if old is not None:
            old.close()

    def shutdown(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, None
        if workers is not None and workers.owned_here():
            workers.close(grace=1.0)


WARM_WORKERS = WarmWorkers()
atexit.register(WARM_WORKERS.shutdown)
