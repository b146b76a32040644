"""The warm worker of a WorkerPool: `python -m kubemap.runtime.poolworker`.

Loop: long-poll the dispatcher for a lease, run the leased slice with the same code path
as a pod worker (`run_slice`: two ranged GETs, write-once results, error records), report
which indices succeeded or failed, ask again. Each task's function is loaded once and kept
while the worker serves that task. A heartbeat thread renews the lease while a long slice
runs; on SIGTERM the worker hands its lease back (an infrastructure failure: no user retry
spent) and exits, so a deleted worker's chunk runs elsewhere at once.

The heartbeat long-polls: when the dispatcher takes the lease back (the task was cancelled,
deleted or has finished) it answers at once and the worker stops the function (Stopper),
keeping the slice's items that had finished; a function that will not stop ends the worker
process, and its Deployment starts a fresh one.

Environment: KUBEMAP_DISPATCHER_URL, KUBEMAP_POOL (<namespace>/<pool>), KUBEMAP_POOL_TOKEN,
KUBEMAP_POOL_KEY (the pool's signing key: kubemap.task.signing), HOSTNAME (the worker's name), and
the S3 settings of the store.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import urllib3

from kubemap.contract import RESULTS_PREFIX, parse_result_key
from kubemap.core.ranges import IndexRanges
from kubemap.errors import StoreError
from kubemap.resources.termination import SliceOutcome, infra_cause, timing_body
from kubemap.resources.workerpool import ENV_DISPATCHER, ENV_POOL, ENV_POOL_TOKEN, python_minor
from kubemap.runtime.packages import (
    ActiveEnvironment,
    Environments,
    PackageInstallError,
    default_cache,
    package_set,
    pool_packages,
)
from kubemap.runtime.worker import Stopped, Terminated, run_slice
from kubemap.stores import open_store
from kubemap.stores import s3 as s3store
from kubemap.stores.base import Store
from kubemap.task import data as taskdata
from kubemap.task.signing import FN_MAC, POOL_KEY_ENV, Signer, key_from_env

EXIT_REFUSED = 2  # the dispatcher refused our credential: let the pod restart with a fresh one
EXIT_NO_KEY = 6  # a signed task, but no pool key yet: the restarted container gets the Secret
EXIT_STUCK = 7  # a revoked lease's function would not stop: a fresh container replaces us
STOP_GRACE_SECONDS = 5.0  # how long a revoked function may take to stop before the exit
STOP_SIGNAL = signal.SIGUSR1
FUNCTIONS_KEPT = 4
REFUSALS_BEFORE_EXIT = 3
REPORTED_TIMINGS = 8  # timing records sent with a report (a retried chunk runs in parts)


def _store_throttles(before: int) -> tuple[int, int]:
    """(store throttles since `before`, the running count) in this process, all buckets."""
    total = sum(limiter.throttles for _, limiter in s3store.LIMITERS.items())
    return max(0, total - before), total


def _log(message: str) -> None:
    print(f"kubemap poolworker: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PoolEnv:
    url: str
    pool: str
    token: str
    worker: str
    key: bytes | None = None  # None: the pool key Secret did not exist when the pod started

    @classmethod
    def parse(cls, environ: Mapping[str, str]) -> PoolEnv:
        missing = [k for k in (ENV_DISPATCHER, ENV_POOL, ENV_POOL_TOKEN) if not environ.get(k)]
        if missing:
            raise SystemExit(
                f"kubemap poolworker: {', '.join(missing)} not set; this program runs in the "
                "pods of a WorkerPool, which the kubemap operator creates"
            )
        worker = environ.get("HOSTNAME") or os.uname().nodename
        return cls(
            environ[ENV_DISPATCHER].rstrip("/"),
            environ[ENV_POOL],
            environ[ENV_POOL_TOKEN],
            worker,
            key_from_env(environ, POOL_KEY_ENV),
        )


class NoPoolKey(Exception):
    """A signed task reached a worker started before the pool's key Secret existed."""


class Refused(Exception):
    """401/403 from the dispatcher."""


class Revoked(Stopped):
    """The dispatcher took the lease back: stop the function (a BaseException, so the user's
    own `except Exception` lets it pass; run_slice keeps what finished before it)."""


class Stopper:
    """Stops the user's function when its lease is revoked, in the thread that runs it.

    The function is interrupted only while it runs (`wrap`): a revoke that lands while the
    worker reads the inputs or writes a finished slice waits for the next item. The items
    that finished before the revoke are written (run_slice keeps them), none after. In the
    worker process (the main thread) a signal interrupts even a sleeping function; a worker
    run in a thread (the tests) gets an asynchronous exception at its next bytecode. A
    function that has not stopped STOP_GRACE_SECONDS later (stuck in C code, or swallowing
    BaseException) ends the process when `exit_when_stuck`: the pool's Deployment starts a
    fresh worker."""

    def __init__(self, *, exit_when_stuck: bool = False) -> None:
        self._lock = threading.Lock()
        self._thread = threading.get_ident()
        self._main = threading.current_thread() is threading.main_thread()
        self._exit_when_stuck = exit_when_stuck
        self._turn = 0  # which lease is running: a late revoke of an earlier one is ignored
        self.lease: str | None = None
        self.revoked = False
        self._inside = False
        if self._main:
            signal.signal(STOP_SIGNAL, self._on_signal)

    def begin(self, lease: str) -> None:
        with self._lock:
            self._turn += 1
            self.lease, self.revoked, self._inside = lease, False, False

    def end(self) -> None:
        with self._lock:
            self._turn += 1
            self.lease, self._inside = None, False

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(item: Any) -> Any:
            with self._lock:
                if self.revoked:
                    raise Revoked()
                self._inside = True
            try:
                return fn(item)
            finally:
                with self._lock:
                    self._inside = False
                    if not self._main:  # an exception posted as fn returned must not land later
                        _async_raise(self._thread, None)

        return guarded

    def revoke(self, lease: str) -> None:
        """Called by the heartbeat thread when the dispatcher says `lease` is gone."""
        with self._lock:
            if lease != self.lease or self.revoked:
                return
            self.revoked = True
            turn = self._turn
            if self._inside:
                if self._main:
                    signal.pthread_kill(self._thread, STOP_SIGNAL)
                else:
                    _async_raise(self._thread, Revoked)
        _log(
            f"lease {lease} was taken back (task cancelled, deleted or finished, or its twin copy won): stopping it"
        )
        timer = threading.Timer(STOP_GRACE_SECONDS, self._stuck, args=(lease, turn))
        timer.daemon = True
        timer.start()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes, maybe while it holds the lock: no lock.
        if self.revoked and self._inside:
            raise Revoked()

    def _stuck(self, lease: str, turn: int) -> None:
        with self._lock:
            still = self._turn == turn
        if not still:
            return
        _log(
            f"the function of revoked lease {lease} did not stop within {STOP_GRACE_SECONDS:g}s"
            + ("; exiting so a fresh worker replaces this one" if self._exit_when_stuck else "")
        )
        if self._exit_when_stuck:
            os._exit(EXIT_STUCK)


def _async_raise(thread: int, exc: type[BaseException] | None) -> None:
    """Post (or with None, withdraw) an exception to be raised in another Python thread."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread), ctypes.py_object(exc) if exc is not None else None
    )


class DispatcherClient:
    def __init__(self, env: PoolEnv) -> None:
        self.env = env
        self.http = urllib3.PoolManager(num_pools=2, maxsize=4, retries=False)
        self.headers = {
            "Authorization": f"Bearer {env.token}",
            "X-Kubemap-Pool": env.pool,
            "X-Kubemap-Worker": env.worker,
            "Content-Type": "application/json",
        }

    def post(self, path: str, body: dict[str, Any], timeout: float) -> tuple[int, Any]:
        response = self.http.request(
            "POST",
            f"{self.env.url}{path}",
            body=json.dumps(body).encode(),
            headers=self.headers,
            timeout=urllib3.Timeout(connect=5.0, read=timeout),
        )
        if response.status in (401, 403):
            raise Refused(response.data.decode(errors="replace")[:300])
        data = json.loads(response.data) if response.data else None
        return response.status, data


class Heartbeat:
    """Renews the current lease every third of its duration, in a daemon thread.

    Each heartbeat long-polls for that third: the dispatcher answers early when the lease is
    taken back, and `on_lost` hears of it at once (the Stopper stops the function)."""

    def __init__(
        self, client: DispatcherClient, on_lost: Callable[[str], None] = lambda lease: None
    ) -> None:
        self.client = client
        self.on_lost = on_lost
        self.lease: str | None = None
        self.period = 5.0
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")
        self._thread.start()

    def hold(self, lease: str | None, seconds: float = 15.0) -> None:
        self.lease, self.period = lease, max(0.5, seconds / 3)
        self._wake.set()

    def stop(self) -> None:
        """End the heartbeat thread (serve() returns: a worker run in a thread by the tests
        must not leave one beating behind it)."""
        self._stopped = True
        self.lease = None
        self._wake.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped:
            self._wake.clear()
            lease, period = self.lease, self.period
            if lease is None:
                self._wake.wait()
                continue
            began = time.monotonic()
            if lease in self._beat(lease, period):
                self.on_lost(lease)
                self._wake.wait()  # nothing to renew until the next lease
                continue
            # An older dispatcher answers at once: keep the renewal cadence all the same.
            self._wake.wait(max(0.0, period - (time.monotonic() - began)))

    def _beat(self, lease: str, period: float) -> list[str]:
        body = {"leases": [lease], "python": python_minor(), "wait": period}
        try:
            status, data = self.client.post("/v1/heartbeat", body, period + 10)
        except (Refused, urllib3.exceptions.HTTPError, ValueError, OSError) as exc:
            _log(f"heartbeat failed ({type(exc).__name__}); retrying")
            return []
        lost = data.get("lost") if status == 200 and isinstance(data, dict) else None
        return [str(x) for x in lost] if isinstance(lost, list) else []


class FunctionCache:
    """task URL -> its function, loaded once; the few most recent tasks are kept."""

    def __init__(self) -> None:
        self._fns: OrderedDict[str, Callable[..., Any]] = OrderedDict()
        self.loads = 0

    def get(
        self, task_url: str, version: str = "", signer: Signer | None = None
    ) -> Callable[..., Any]:
        """`version` is the task's rerun round: MapRun.retry(fn=...) rewrites fn.pkl."""
        key = f"{task_url}#{version}"
        if key in self._fns:
            self._fns.move_to_end(key)
            return self._fns[key]
        fn = taskdata.read_function(open_store(task_url), signer)
        self.loads += 1
        self._fns[key] = fn
        while len(self._fns) > FUNCTIONS_KEPT:
            self._fns.popitem(last=False)
        return fn


def done_in_span(task: Store, start: int, count: int) -> IndexRanges:
    """Indices of [start, start+count) that have a result, whatever chunk wrote them.

    Pool chunks change size as the task goes (guided), so an earlier result object may start
    before this slice: the key names each object's span, so one LIST finds the overlapping
    ones and only their headers are read."""
    end, found = start + count, IndexRanges()
    for key in task.list(RESULTS_PREFIX):
        try:
            first, span = parse_result_key(key)
        except ValueError:
            continue
        if first < end and first + span > start:
            found = found | taskdata.indices_of(task, key)
    return found & IndexRanges.span(start, end)


def _run_span(
    task: Store,
    start: int,
    count: int,
    fn: Callable[..., Any],
    attempt: int,
    signer: Signer | None = None,
    stop_at_failure: bool = False,
) -> SliceOutcome:
    """run_slice, skipping (on a re-run) indices that already have results. A stop (Stopped)
    is raised again with the outcome of every part that ran; with stop_at_failure, a user
    failure leaves the rest of the span unrun, in the parts after it too."""
    if attempt == 0:
        return run_slice(
            task,
            start,
            count,
            fn=fn,
            attempt=attempt,
            skip_done=False,
            signer=signer,
            stop_at_failure=stop_at_failure,
        )
    done = done_in_span(task, start, count)
    outcomes: list[SliceOutcome] = []
    todo = IndexRanges.span(start, start + count) - done
    try:
        for lo, hi in todo.intervals:
            outcome = run_slice(
                task,
                lo,
                hi - lo,
                fn=fn,
                attempt=attempt,
                skip_done=False,
                signer=signer,
                stop_at_failure=stop_at_failure,
            )
            outcomes.append(outcome)
            if outcome.unrun:
                break
    except Stopped as exc:
        exc.outcome = _merge([*outcomes, *([exc.outcome] if exc.outcome else [])], done, todo)
        raise
    return _merge(outcomes, done, todo)


def _merge(outcomes: list[SliceOutcome], skipped: IndexRanges, todo: IndexRanges) -> SliceOutcome:
    succeeded, failed = IndexRanges(), IndexRanges()
    errors: dict[int, Any] = {}
    for outcome in outcomes:
        succeeded, failed = succeeded | outcome.succeeded, failed | outcome.failed
        errors.update(outcome.errors)
    return SliceOutcome(
        succeeded=succeeded,
        failed=failed,
        skipped=skipped,
        errors=errors,
        unrun=todo - succeeded - failed,
        timings=tuple(t for outcome in outcomes for t in outcome.timings),
    )


def stopped_report(lease: str, worker: str, outcome: SliceOutcome | None) -> dict[str, Any]:
    """The report of a lease taken back: what finished before the stop was written and
    counts; the rest never ran here (an infrastructure outcome: no user retry spent)."""
    kept = outcome or SliceOutcome()
    return {
        "lease": lease,
        "kind": "infra",
        "why": f"lease taken back: worker {worker} stopped the function",
        "succeeded": str(kept.succeeded | kept.skipped),
        "failed": str(kept.failed),
    }


class Runtime:
    """The worker's runtime packages: the pool's (from its env) plus each task's own."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.envs: Environments | None = None
        self.active = ActiveEnvironment()

    def prepare(self, grant: Mapping[str, Any]) -> None:
        """Install (once) and activate the task's package set; PackageInstallError if pip fails."""
        packages = package_set(pool_packages(self.environ), grant.get("packages") or ())
        if packages and self.envs is None:
            self.envs = Environments(default_cache(self.environ), log=_log)
        self.active.switch(self.envs.path(packages) if self.envs and packages else None)


def _usage_failure(report: dict[str, Any], start: int, count: int, why: str) -> dict[str, Any]:
    """A failure no retry can cure (pip cannot install the packages): the task fails at once."""
    _log(f"cannot run items {start}..{start + count - 1}: {why}")
    return {**report, "kind": "usage", "why": why[:400]}


def run_lease(
    grant: dict[str, Any],
    functions: FunctionCache,
    key: bytes | None = None,
    runtime: Runtime | None = None,
    stopper: Stopper | None = None,
) -> dict[str, Any]:
    """Run one leased slice; the report body to send back. With the pool's key, the task's
    files are checked before unpickling (the MACs bind the task's name, from the grant).
    Raises Revoked when the stopper stops the function (after writing what had finished)."""
    task_url = str(grant["task_url"])
    start, count, attempt = int(grant["start"]), int(grant["count"]), int(grant["attempt"])
    report: dict[str, Any] = {"lease": grant["lease_id"]}
    signer = Signer(str(grant["task"]), key) if key is not None else None
    try:
        (runtime or Runtime(os.environ)).prepare(grant)
    except PackageInstallError as exc:
        return _usage_failure(report, start, count, str(exc))
    try:
        task = open_store(task_url)
        if signer is None and task.exists(FN_MAC):
            raise NoPoolKey(f"task {grant['task']} is signed, but this worker has no pool key")
        fn = functions.get(task_url, str(grant.get("version") or ""), signer)
        if stopper is not None:
            fn = stopper.wrap(fn)
        stop = bool(grant.get("stop_at_failure"))  # absent from an older dispatcher: never
        outcome = _run_span(task, start, count, fn, attempt, signer, stop)
    except StoreError as exc:
        _log(f"infrastructure failure on items {start}..{start + count - 1} of {task_url}: {exc}")
        # the cause says whether a retry can help ("tampered": never; core.policy)
        return {**report, "kind": "infra", "why": str(exc)[:400], "cause": infra_cause(exc)}
    except (Terminated, NoPoolKey, Revoked):
        raise
    except Exception as exc:  # kubemap's own bug, or the function could not be unpickled
        _log(f"internal error on items {start}..{start + count - 1}: {type(exc).__name__}: {exc}")
        return {**report, "kind": "infra", "why": f"{type(exc).__name__}: {exc}"[:400]}
    for index, error in sorted(outcome.errors.items())[:3]:
        _log(f"index {index} failed: {error.type}: {error.message}")
    return {
        **report,
        "kind": "user" if outcome.failed else "ok",
        "succeeded": str(outcome.succeeded | outcome.skipped),
        "failed": str(outcome.failed),
        # for the task's status summary and the operator's metrics (bounded: a few parts)
        "timings": [timing_body(t) for t in outcome.timings[-REPORTED_TIMINGS:]],
    }


def _send_report(client: DispatcherClient, body: dict[str, Any]) -> None:
    """Report, retrying while the dispatcher restarts; a lease it forgot is dropped (410)."""
    for delay in (0.2, 0.5, 1, 2, 4, 8):
        try:
            status, _ = client.post("/v1/report", body, 10)
            if status in (200, 410):
                return
        except Refused:  # the pool was deleted (or is not yet known to a restarted operator)
            _log(f"lease {body['lease']} not reported: the dispatcher refused this worker")
            return  # the lease expires and runs again; indices with results are skipped
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            pass
        time.sleep(delay)
    _log(f"could not report lease {body['lease']}; the dispatcher re-runs it when it expires")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def serve(env: PoolEnv, *, stop: Callable[[], bool] = lambda: False, wait: float = 20.0) -> int:
    """Lease, run, report until SIGTERM (or stop() says so: tests run workers in threads)."""
    client = DispatcherClient(env)
    # Only the worker process (its main thread) may end itself over a function that will
    # not stop; workers run in threads by the tests must not take the test run down.
    stopper = Stopper(exit_when_stuck=threading.current_thread() is threading.main_thread())
    heartbeat = Heartbeat(client, on_lost=stopper.revoke)
    try:
        functions = FunctionCache()
        runtime = Runtime(os.environ)
        refusals, backoff = 0, 0.5
        pending: dict[str, Any] | None = None  # the last lease's report, sent with the next ask
        throttles_seen = _store_throttles(0)[1]
        _log(f"serving pool {env.pool} as {env.worker} (Python {python_minor()}) from {env.url}")
        while not stop():
            try:
                ask: dict[str, Any] = {"python": python_minor(), "wait": wait}
                if pending is not None:
                    ask["report"] = pending
                    # store throttles waited out on that lease: the dispatcher paces the pool
                    ask["throttles"], throttles_seen = _store_throttles(throttles_seen)
                status, grant = client.post("/v1/lease", ask, wait + 20)
            except Terminated:
                if pending is not None:
                    _send_report(client, pending)  # idle, but the last chunk's news still counts
                raise
            except Refused as exc:
                refusals += 1
                _log(f"the dispatcher refused this worker's credential: {exc}")
                if refusals >= REFUSALS_BEFORE_EXIT:
                    return EXIT_REFUSED
                time.sleep(2)
                continue
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                _log(f"dispatcher unreachable ({type(exc).__name__}); retrying in {backoff:g}s")
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            refusals, backoff, pending = 0, 0.5, None  # the dispatcher answered: report delivered
            if status != 200 or not grant:
                continue  # 204: no work within the long poll
            stopper.begin(str(grant["lease_id"]))
            heartbeat.hold(str(grant["lease_id"]), float(grant.get("lease_seconds", 15)))
            try:
                body = run_lease(grant, functions, env.key, runtime, stopper)
            except Revoked as exc:
                stopper.end()
                heartbeat.hold(None)
                kept = exc.outcome.succeeded if exc.outcome else IndexRanges()
                _log(
                    f"stopped lease {grant['lease_id']}: kept the {len(kept)} item(s) that finished"
                )
                # What finished counts in the task's verdict, which waits for this report.
                _send_report(
                    client, stopped_report(str(grant["lease_id"]), env.worker, exc.outcome)
                )
                continue
            except NoPoolKey as exc:
                stopper.end()
                heartbeat.hold(None)
                why = f"{exc}: restarting to load it"
                _send_report(client, {"lease": grant["lease_id"], "kind": "infra", "why": why})
                _log(why)
                return EXIT_NO_KEY
            except Terminated:
                stopper.end()
                heartbeat.hold(None)
                _send_report(
                    client,
                    {
                        "lease": grant["lease_id"],
                        "kind": "infra",
                        "why": f"worker {env.worker} stopped (SIGTERM)",
                    },
                )
                _log("terminated (SIGTERM): lease handed back")
                return 0
            stopper.end()
            heartbeat.hold(None)
            pending = body
        if pending is not None:
            _send_report(client, pending)
        return 0
    finally:
        heartbeat.stop()


def main() -> int:
    env = PoolEnv.parse(os.environ)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return serve(env)
    except Terminated:
        _log("terminated (SIGTERM) while idle")
        return 0


if __name__ == "__main__":
    sys.exit(main())
