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
log, which the kubelet copies into the pod status, so the operator needs no S3 access. On an
infrastructure failure the line says why instead, for the operator to surface:
{"v":1,"infra":"<message>","cause":{"kind":"store","code":"InvalidAccessKeyId","bucket":"b",
"message":"<short>"}}; a task from another Python minor is refused once, for good (exit 5):
{"v":1,"refused":"<message>","cause":{"kind":"version","python":"3.12.1","worker":"3.11.9"}}.
`run_slice` is the same code path the local backend runs in its worker processes.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from kubemap.contract import (
    DEFAULT_TERMINATION_LOG,
    ENV_ATTEMPT,
    ENV_COUNT,
    ENV_FAILURES,
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
from kubemap.core.policy import decisive_failure
from kubemap.core.ranges import IndexRanges
from kubemap.errors import (
    ConfigError,
    RemoteError,
    SerializationError,
    StoreError,
)
from kubemap.resources.termination import (
    SliceOutcome,
    infra_line,
    refused_line,
    summary_line,
)
from kubemap.resources.workerpool import ENV_POOL
from kubemap.runtime.capture import ItemCapture
from kubemap.stores import Store, open_store
from kubemap.task import data as taskdata
from kubemap.task import output as keptoutput
from kubemap.task import signing, timings
from kubemap.task.meta import read_meta, version_mismatch
from kubemap.task.signing import Signer

_WRITE_RESULT_TRIES = 8
_TRACEBACKS_LOGGED = 3


class Terminated(BaseException):
    """SIGTERM arrived: stop now (BaseException, so the user-error handler lets it pass)."""


class Stopped(BaseException):
    """Raised inside fn by a caller that stops the slice (a warm pool's lease taken back):
    run_slice records the items that finished before it, then raises it again with
    `outcome` saying what it recorded."""

    outcome: SliceOutcome | None = None


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
        # module:qualname, so the caller can raise it as the user's own class (RemoteError)
        "class": f"{type(exc).__module__}:{type(exc).__qualname__}",
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
    signer: Signer | None = None,
    stop_at_failure: bool = False,
) -> SliceOutcome:
    """Run fn over items [start, start+count) of the task and record what happened.

    User exceptions become error records and `failed`; infrastructure failures (store,
    corrupt task, the function's module missing here) raise StoreError/CorruptTaskError.
    With skip_done on a retry (attempt > 0), indices that already have a result are skipped.
    With a signer, fn.pkl and the slice are checked before unpickling (TamperedError) and the
    result object is sealed.
    With stop_at_failure (the caller knows a failure now decides the task: decisive_failure),
    the first user failure ends the slice: the items after it are not run (fail-fast: one bad
    input leaves the rest unrun) and are reported as `unrun`; what finished before is kept.
    Each run leaves a timing record in the task's store (task.timings), unless
    KUBEMAP_TIMINGS=0; a record that cannot be written never fails the slice. What each item
    printed is caught (runtime.capture, main thread only) and kept in one object per slice
    (task.output), unless KUBEMAP_KEEP_OUTPUT=0; it is still echoed to the real stdout.
    """
    clock = SliceClock(task, start, count, attempt) if timings.recording_enabled() else None
    try:
        outcome = _run_slice(
            task,
            start,
            count,
            fn=fn,
            attempt=attempt,
            skip_done=skip_done,
            signer=signer,
            stop_at_failure=stop_at_failure,
            clock=clock,
        )
    except Stopped as exc:
        if clock is not None:
            record = clock.record(exc.outcome)
            if exc.outcome is not None and record is not None:
                exc.outcome = dataclasses.replace(exc.outcome, timings=(record,))
        raise
    except Exception as exc:
        # A plain StoreError means the store did not answer: another write would only wait
        # for it again. Anything else (a corrupt task, a missing module) is worth a record.
        if clock is not None and type(exc) is not StoreError:
            clock.record(None, error=f"{type(exc).__name__}: {exc}")
        raise
    if clock is not None:
        record = clock.record(outcome)
        if record is not None:  # the termination line / pool report carries it too
            outcome = dataclasses.replace(outcome, timings=(record,))
    return outcome


def _run_slice(
    task: Store,
    start: int,
    count: int,
    *,
    fn: Callable[..., Any] | None,
    attempt: int,
    skip_done: bool,
    signer: Signer | None,
    stop_at_failure: bool,
    clock: SliceClock | None,
) -> SliceOutcome:
    span = IndexRanges.span(start, start + count)
    done = (
        taskdata.done_in_slice(task, start, count) if skip_done and attempt > 0 else IndexRanges()
    )
    todo = span - done
    if not todo:
        return SliceOutcome(skipped=done)
    if fn is None:
        fn = taskdata.read_function(task, signer)
    items = taskdata.read_slice(task, start, count, signer=signer)
    times = clock.fetched() if clock is not None else None
    values: dict[int, Any] = {}
    records: dict[int, dict[str, Any]] = {}
    stopped: Stopped | None = None
    printed = keptoutput.SliceOutput(start, count, attempt, worker_identity())
    capture = ItemCapture.start(printed)
    try:
        for index in todo:
            began = time.perf_counter()
            if capture is not None:
                capture.begin()
            try:
                values[index] = fn(items[index - start])
            except Exception as exc:
                records[index] = error_record(index, exc, attempt)
                if stop_at_failure:
                    break
            except Stopped as exc:  # what finished before the stop is kept, not thrown away
                stopped = exc
                break
            finally:
                seconds = time.perf_counter() - began
                if capture is not None:
                    capture.end(index, seconds)
                if times is not None:
                    times.add(index, seconds)
    finally:
        if capture is not None:
            capture.close()
    if clock is not None:
        clock.computed()
    blob = _encode(values, records, attempt, sealed=signer is not None)
    _keep_output(task, printed)
    for index, record in records.items():
        taskdata.write_error(task, index, record)
    if values:
        _save_results(task, start, count, values, blob, signer)
        _fill_cache(task, start, count, values)
    outcome = SliceOutcome(
        succeeded=IndexRanges.of(values),
        failed=IndexRanges.of(records),
        skipped=done,
        errors={i: RemoteError.from_record(r) for i, r in records.items()},
        unrun=todo - IndexRanges.of(values) - IndexRanges.of(records),
    )
    if stopped is not None:
        stopped.outcome = outcome
        raise stopped
    return outcome


class SliceClock:
    """Times one run of a slice (fetch, compute, write, and each item) and writes its
    record (task.timings) at the end, ignoring any error doing so."""

    def __init__(self, task: Store, start: int, count: int, attempt: int) -> None:
        self.task, self.start, self.count, self.attempt = task, start, count, attempt
        self.wall = time.time()
        self.boot = _boot_seconds()
        self.began = self.mark = time.perf_counter()
        self.fetch = self.compute = 0.0
        self.items = timings.ItemTimes()

    def fetched(self) -> timings.ItemTimes:
        now = time.perf_counter()
        self.fetch, self.mark = now - self.mark, now
        return self.items

    def computed(self) -> None:
        now = time.perf_counter()
        self.compute, self.mark = now - self.mark, now

    def record(
        self, outcome: SliceOutcome | None, error: str | None = None
    ) -> timings.SliceTiming | None:
        now = time.perf_counter()
        if not self.compute and not self.fetch:  # nothing ran: the whole time was fetching
            self.fetch, self.mark = now - self.began, now
        kept = outcome or SliceOutcome()
        record = timings.SliceTiming(
            first=self.start,
            count=self.count,
            attempt=self.attempt,
            worker=worker_identity(),
            start=self.wall,
            fetch=self.fetch,
            compute=self.compute,
            write=now - self.mark,
            ran=sum(self.items.buckets.values()),
            succeeded=len(kept.succeeded),
            failed=len(kept.failed),
            skipped=len(kept.skipped),
            unrun=len(kept.unrun),
            slowest=self.items.slowest,
            buckets=dict(self.items.buckets),
            boot=self.boot,
            error=error,
        )
        try:
            timings.write_timing(self.task, record)
        except Exception as exc:  # recording must never fail the slice it describes
            _log(
                f"could not write the timing record of items {self.start}.."
                f"{self.start + self.count - 1}: {type(exc).__name__}: {exc}"
            )
        return record


def worker_identity(environ: Mapping[str, str] | None = None) -> str:
    """Who ran a slice: the pod's name in a pod (its HOSTNAME), else host:pid (the local
    backend's worker processes share a host)."""
    env = os.environ if environ is None else environ
    host = env.get("HOSTNAME") or socket.gethostname()
    if env.get(ENV_TASK_URL) or env.get(ENV_POOL):
        return host
    return f"{host}:{os.getpid()}"


_booted_pid: int | None = None


def _boot_seconds() -> float | None:
    """Seconds from this process's start to now, on its first slice only (None after, and
    where /proc cannot say): a pod's start-up as the pod sees it. A warm pool's worker says
    None: it may have waited idle for its first lease, which is no start-up of the task's."""
    global _booted_pid
    if _booted_pid == os.getpid() or os.environ.get(ENV_POOL):
        return None
    _booted_pid = os.getpid()
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _keep_output(task: Store, printed: keptoutput.SliceOutput) -> None:
    """What the slice's items printed (task.output); the results matter more, so an output
    that cannot be kept is logged, never fatal."""
    try:
        keptoutput.write_output(task, printed)
    except Exception as exc:
        _log(
            f"could not keep the output of items {printed.first}.."
            f"{printed.first + printed.count - 1}: {type(exc).__name__}: {exc}"
        )


def _fill_cache(task: Store, start: int, count: int, values: dict[int, Any]) -> None:
    """Cache entries for a task submitted with cache=True; the results are already safe,
    so a cache that cannot be written costs a rerun next time, never this slice."""
    from kubemap.task import cacheentries as cachestore

    try:
        cachestore.record_slice(task, start, count, values)
    except StoreError as exc:
        _log(f"could not fill the cache for items {start}..{start + count - 1}: {exc}")


def _encode(
    values: dict[int, Any], records: dict[int, dict[str, Any]], attempt: int, sealed: bool
) -> bytes:
    """Encode the results; a value that cannot be pickled fails its index instead."""
    while True:
        try:
            return taskdata.encode_results(values, sealed=sealed)
        except SerializationError as exc:
            if exc.index is None or exc.index not in values:
                raise
            del values[exc.index]
            record = error_record(exc.index, exc, attempt)
            # The chain below is kubemap's own pickling frames: the message says it all.
            record["traceback"] = "".join(traceback.format_exception_only(exc))
            records[exc.index] = record


def _save_results(
    task: Store,
    start: int,
    count: int,
    values: dict[int, Any],
    blob: bytes,
    signer: Signer | None = None,
) -> None:
    """Write the slice's result object once. If it exists already (a duplicate pod, or a
    retry after a partial success), add only the indices still missing, under a free key."""
    if task.put_if_absent(
        result_key(start, count), taskdata.seal_result(blob, signer, start, count)
    ):
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
        if taskdata.write_results(task, first, span, missing, signer):
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
    failures: int | None = None  # the slice's user failures so far (ENV_FAILURES), if told

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
        failures = number(ENV_FAILURES, required=False, minimum=0)
        assert start is not None and count is not None
        if total is not None and start + count > total:
            raise ConfigError(
                f"{ENV_INDEX}={start} + {ENV_COUNT}={count} is past {ENV_TOTAL}={total}"
            )
        return cls(task_url, start, count, total, attempt, failures)


def task_signer(env: WorkerEnv, environ: Mapping[str, str]) -> Signer | None:
    """The task's signer from KUBEMAP_TASK_KEY (its Secret); the task's name is the last part
    of its URL, as the operator builds it. No key: a MapTask made without the SDK."""
    key = signing.key_from_env(environ)
    if key is None:
        _log(f"{signing.KEY_ENV} is not set: the task's files are loaded unauthenticated")
        return None
    return Signer(env.task_url.rstrip("/").rsplit("/", 1)[-1], key)


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


def _written_before(task: Store, start: int, count: int) -> IndexRanges:
    """Indices of the slice whose results are in the store (one narrow LIST); none when
    the store cannot say, or a second signal comes."""
    try:
        return taskdata.done_in_slice(task, start, count)
    except (StoreError, Terminated):
        return IndexRanges()


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
        meta = read_meta(task)
        refusal = version_mismatch(meta)
        if refusal is not None:  # permanent: retrying on the same image cannot help
            _log(f"refusing items {env.start}..{last} of {env.task_url}: {refusal}")
            _write_termination_log(
                env_map, refused_line(refusal, meta.python, platform.python_version())
            )
            record_infra_failure(task, env.start, env.count, ConfigError(refusal), env.attempt)
            return EXIT_USAGE_ERROR
        # The operator tells the slice's user failures so far; without it (a MapTask made
        # by another client) the attempt number, which counts lost pods too, stands in:
        # at worst a slice stops early and the planner runs the rest again (an unreported
        # index is never counted as the user's failure).
        failures = env.attempt if env.failures is None else env.failures
        stop = decisive_failure(
            allowed_failures=meta.allowed_failures, retries=meta.retries, failures=failures
        )
        outcome = run_slice(
            task,
            env.start,
            env.count,
            attempt=env.attempt,
            signer=task_signer(env, env_map),
            stop_at_failure=stop,
        )
    except Terminated:
        # The signal may come after some results were written (a task stopping at its
        # verdict deletes running pods): report those, or the operator counts them as not
        # run while the store holds them (issue 18 item 16).
        done = _written_before(task, env.start, env.count)
        said = f"results of {done} were written" if done else "nothing recorded"
        _log(f"terminated (SIGTERM) while running items {env.start}..{last}; {said}")
        if done:
            _write_termination_log(env_map, summary_line(SliceOutcome(succeeded=done)))
        return EXIT_INFRA_ERROR
    except StoreError as exc:
        _log(f"infrastructure failure for items {env.start}..{last} of {env.task_url}: {exc}")
        _write_termination_log(env_map, infra_line(exc))
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
        + (f", {len(outcome.unrun)} not run (the failure ended the task)" if outcome.unrun else "")
    )
    _write_termination_log(env_map, summary_line(outcome))
    return EXIT_USER_ERROR if outcome.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
