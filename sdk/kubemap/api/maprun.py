"""MapRun: the handle on a submitted run, and CachedRun, the same over inputs of which
some came from the result cache.

    run = kubemap.submit(fn, inputs, backend="kubernetes", store="s3://bucket/runs")
    run.wait(); run.results(); run.failures(); run.not_run(); run.retry()

Results and failure records live in the store; a MapRun reads them from there, and asks
its backend's RunHandle only for the status. MapRun.attach reads back a task submitted
earlier, by this process or another.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from kubemap.api.progress import ProgressBar, want_progress
from kubemap.api.streaming import as_completed, fill_missing
from kubemap.backends import RunHandle, get_backend
from kubemap.backends.base import still_running
from kubemap.core.ranges import IndexRanges
from kubemap.core.status import Phase, Reason, RunStatus, run_status
from kubemap.errors import (
    CancelledError,
    ConfigError,
    MapTaskError,
    RemoteError,
    StoreError,
    TimeoutError,
)
from kubemap.resources.options import RunOptions, validate_options
from kubemap.stores import Store, default_store_url, open_store
from kubemap.task.cacheentries import (
    CONFIG_KEY,
    DIGEST_SIZE,
    CacheSplit,
    function_identity,
    read_split,
)
from kubemap.task.data import (
    iter_results,
    succeeded_indexes,
    write_function,
)
from kubemap.task.meta import read_total
from kubemap.task.pickling import loads
from kubemap.task.signing import Signer
from kubemap.task.statusfile import read_status, tally

__all__ = ["CachedRun", "MapRun", "StoredRun", "misses_options"]

POLL_SECONDS = 0.1  # how often a progress bar refreshes
FETCH_THREADS = 16  # cache entries read at once


class MapRun:
    """A submitted run. Results and failures are read from the store, in input order.

    You get one from `kubemap.submit` or `MapRun.attach`, not by calling it yourself.

    Args:
        name: The task's name (its folder in the store; on Kubernetes the MapTask's name).
        task: The task's folder in the store.
        total: The number of inputs.
        handle: The backend's handle that reports the run's status.
        options: The validated options the run was submitted with.
    """

    def __init__(
        self, name: str, task: Store, total: int, handle: RunHandle, options: RunOptions
    ) -> None:
        self._name = name
        self._task = task
        self._total = total
        self._handle = handle
        self._options = options
        # A signed task's result objects are checked with it (kubemap.task.signing); handles of
        # unsigned runs (local) have none.
        self._signer: Signer | None = getattr(handle, "signer", None)

    def __repr__(self) -> str:
        status = self.status()
        return (
            f"<MapRun {self._name} {status.phase.value} {status.succeeded}/{status.total} "
            f"at {self._task.url}>"
        )

    @property
    def name(self) -> str:
        """The task's name: its folder in the store and, on Kubernetes, the MapTask's name."""
        return self._name

    @property
    def store_url(self) -> str:
        """Where the task's files, results and error records are."""
        return self._task.url

    @property
    def total(self) -> int:
        """The number of inputs (indices 0 to total - 1)."""
        return self._total

    # What kubemap.api.streaming and kubemap.api.cache build on (public, so that neither reaches
    # into a run's private state). A CachedRun's are those of the task that ran its misses:
    # that task's indices are not the caller's, which is why a CachedRun answers every
    # index-bearing question (results, failures, not_run, as_completed) itself.
    @property
    def task_store(self) -> Store:
        """The task's folder in the store: fn.pkl, the inputs, results/ and errors/."""
        return self._task

    @property
    def handle(self) -> RunHandle:
        """The backend's handle of the run (the current one: retry() starts another)."""
        return self._handle

    @property
    def options(self) -> RunOptions:
        """The validated options the run was submitted with (and a retry runs with)."""
        return self._options

    @property
    def signer(self) -> Signer | None:
        """What checks a signed task's result objects (kubemap.task.signing); None if unsigned."""
        return self._signer

    def status(self) -> RunStatus:
        """A snapshot of the run (phase, total, succeeded, failed, active, not_run, reason,
        message), small whatever the number of inputs; does not wait."""
        return self._handle.status()

    def wait(self, timeout: float | None = None, progress: bool | None = None) -> RunStatus:
        """Block until the run finishes; return its final status (a failed run does not raise
        here: results() does). Raises kubemap.TimeoutError if `timeout` seconds pass first;
        the run goes on. progress: None shows a bar on a terminal for runs longer than ~1 s.

        Args:
            timeout: Seconds to wait at most; None waits as long as the run takes.
            progress: Show a progress bar (True), never (False), or on a terminal for runs
                longer than about a second (None).

        Returns:
            The final RunStatus.
        """
        if not want_progress(progress):
            return self._handle.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with ProgressBar(self._total, self._name, delay=0.0 if progress else 1.0) as bar:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                step = POLL_SECONDS if left is None else min(POLL_SECONDS, left)
                with contextlib.suppress(TimeoutError):
                    status = self._handle.wait(step)
                    bar.show(status)
                    return status
                status = self._handle.status()
                bar.show(status)
                if left == 0.0:
                    return self._handle.wait(0)  # raises TimeoutError with the counts

    def done(self) -> bool:
        """True once the run finished (succeeded, failed or cancelled)."""
        return self._handle.done()

    def results(
        self,
        partial: bool | None = None,
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Every result in input order; waits (up to `timeout` s) for the run to finish first.

        Raises MapTaskError if an index failed beyond its retries or was never run,
        kubemap.TimeoutError if the run hit its timeout, CancelledError if it was cancelled.
        partial=True returns the list anyway with None where there is no result (failures()
        and not_run() tell those apart); the default (None) does that only when the run
        succeeded while tolerating failures (min_success_ratio < 1).
        return_exceptions=True never raises for an index: each one without a result holds
        its RemoteError (type "NotRun" for one that never ran) instead.

        Args:
            partial: Return what there is (None where no result) instead of raising.
            timeout: Seconds to wait for the run to finish.
            return_exceptions: Put each missing result's RemoteError in its place.

        Returns:
            One value per input, in input order.
        """
        status = self.wait(timeout, progress=False)
        tolerated = status.phase is Phase.SUCCEEDED and status.failed > 0
        if not partial and not return_exceptions and not (partial is None and tolerated):
            self.raise_for_status(status)
        values: list[Any] = [None] * self._total
        for index, value in iter_results(self._task, self._signer):
            if 0 <= index < self._total:
                values[index] = value
        if return_exceptions:
            done = succeeded_indexes(self._task)
            for index, error in fill_missing(self, status, IndexRanges.span(0, self._total) - done):
                values[index] = error
        return values

    def as_completed(
        self, *, return_exceptions: bool = False, timeout: float | None = None
    ) -> Iterator[tuple[int, Any]]:
        """(index, result) pairs as their slices finish, in constant memory. Every index
        comes out exactly once, as its result or as its exception: with
        return_exceptions=True each index without a result is yielded, at the end, with its
        RemoteError (type "NotRun" for one never run); without it, once every result is
        out, they raise together: MapTaskError (also when min_success_ratio < 1 tolerated
        them), kubemap.TimeoutError or CancelledError. See kubemap.api.streaming.

        Args:
            return_exceptions: Yield each index without a result, at the end, with its
                RemoteError instead of raising.
            timeout: Seconds to wait at most for the run; then kubemap.TimeoutError.

        Yields:
            (index, result) pairs, each index once.
        """
        return as_completed(self, return_exceptions=return_exceptions, timeout=timeout)

    def not_run(self) -> IndexRanges:
        """The indices that were never run: no result and no failure record (for a finished
        run; while it runs, what has not finished yet)."""
        return tally(self._task, self.status()).partition.not_run

    def failures(self) -> dict[int, RemoteError]:
        """Index -> RemoteError for every index without a result whose last attempt failed
        (for a finished run, also indices whose result is missing for another reason)."""
        return tally(self._task, self.status()).failures

    def cancel(self) -> bool:
        """Stop the run; results that finished stay in the store. False if it had already
        finished (nothing changes then)."""
        return self._handle.cancel()

    def delete(self) -> int:
        """Delete the task's files from the store (after you have its results)."""
        return self._task.delete_prefix()

    def retry(self, fn: Callable[..., Any] | None = None) -> MapRun:
        """Run again, into this task and its result set, only the indices without a result
        (failed and never run), with fresh retry budgets; `fn` replaces the function (a
        fix). Indices that succeeded never run again. Returns this run, running again;
        results() afterwards returns the whole list in order. Only a finished run retries.

        Args:
            fn: A function to run instead of the one submitted (the fix); None keeps it.

        Returns:
            This run, running again (unless nothing was missing).

        Raises:
            ConfigError: The run has not finished yet.
        """
        status = self.status()
        if not status.finished:
            raise ConfigError(
                f"task {self._name} is still running ({status.counts()}): wait() for it or "
                "cancel() it before retry()"
            )
        done = succeeded_indexes(self._task) & IndexRanges.span(0, self._total)
        if len(done) == self._total:
            return self  # nothing is missing: nothing runs
        if fn is not None:
            if not callable(fn):
                raise ConfigError(f"fn must be callable, got {type(fn).__name__}: pass a function")
            write_function(self._task, fn, self._signer)
        backend = get_backend(self._options.backend)
        self._handle = backend.retry(self._task, self._total, self._options, self._name, done)
        return self

    def raise_for_status(self, status: RunStatus) -> None:
        """Raise what results() raises for a run that ended with `status` (MapTaskError,
        kubemap.TimeoutError, CancelledError, ConfigError, StoreError); return if it
        succeeded without a failure. A run that tolerated failures (min_success_ratio < 1)
        gets its MapTaskError too: as_completed() and imap() raise it at the end.

        Args:
            status: The run's final status (from wait() or status()).
        """
        if status.phase is Phase.SUCCEEDED and status.failed == 0:
            return
        where = f"finished results stay in {self._task.url}; read them with results(partial=True)"
        counts = status.counts()
        if status.reason is Reason.DEADLINE:
            raise TimeoutError(f"task {self._name} timed out: {status.message or counts}; {where}")
        if status.reason is Reason.CANCELLED:
            raise CancelledError(f"task {self._name} was cancelled ({counts}); {where}")
        if status.reason in (
            Reason.INVALID_SPEC,
            Reason.POOL_UNAVAILABLE,
            Reason.QUEUE_UNAVAILABLE,
        ):
            raise ConfigError(f"task {self._name} was refused: {status.message}")
        counted = tally(self._task, status)  # the one split: failures(), not_run(), the CLI
        failures = counted.failures
        if status.reason is Reason.INFRASTRUCTURE and not failures:
            raise StoreError(status.message or f"task {self._name} failed in the store")
        succeeded = len(counted.partition.succeeded)
        error = MapTaskError(
            failures,
            total=self._total,
            name=self._name,
            not_run=counted.partition.not_run,
            succeeded=succeeded,
            why=status.message,
        )
        attach = f"kubemap.MapRun.attach({self._name!r}, store={self._store_base()!r})"
        note = (
            f"Results of the {succeeded} that succeeded stay in {self._task.url}: {attach}"
            ".results(partial=True); run the rest with min_success_ratio below 1, or rerun "
            "only what is missing with .retry()"
            if succeeded  # with no result, there is nothing to read: say what can be done
            else f"No input has a result; once the cause is fixed, {attach}.retry() reruns "
            f"them (the task stays in {self._task.url})"
        )
        error.args = (f"{error}\n\n{note}",)
        raise error

    def _store_base(self) -> str:
        return self._task.url.rsplit("/", 1)[0]

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        store: str | None = None,
        backend: str = "local",
        namespace: str | None = None,
        **options: Any,
    ) -> MapRun:
        """A task submitted earlier (by this process or another), to follow it and read its
        results. backend="kubernetes" follows the MapTask `name` in the cluster (its store is
        the MapTask's, unless given); otherwise the status is what the store recorded.
        `options` (retries, parallelism...) are those a retry() runs with. A task submitted
        with cache=True comes back as a CachedRun: every index is the caller's.

        Args:
            name: The task's name (`run.name`, `kubemap list`).
            store: The store it was submitted to; default the default store (on Kubernetes,
                the MapTask's own).
            backend: `"local"` (the store's record) or `"kubernetes"` (the MapTask).
            namespace: Kubernetes: the MapTask's namespace; default the context's.
            **options: Options a retry() runs with (retries, parallelism, min_success_ratio).
        """
        if backend == "kubernetes":
            from kubemap.backends.kubernetes.backend import attach_maptask

            task, total, handle = attach_maptask(name, store=store, namespace=namespace)
            opts = validate_options({"backend": backend, "namespace": namespace, **options})
            return _as_cached(cls(name, task, total, handle, opts))
        task = open_store(store or default_store_url()).child(name)
        total = read_total(task)
        opts = validate_options({"store": store, "backend": backend, **options})
        return _as_cached(cls(name, task, total, StoredRun(name, task, total), opts))


class StoredRun:
    """A RunHandle for a task read back from the store: its status.json when a local run
    wrote one, else what the result objects say."""

    def __init__(self, name: str, task: Store, total: int) -> None:
        self.name = name
        self._task = task
        self._total = total

    def status(self) -> RunStatus:
        record = read_status(self._task)
        if record is not None:
            return run_status(record, total=self._total)
        parts = tally(self._task, RunStatus(Phase.FAILED, self._total)).partition
        complete = len(parts.succeeded) == self._total
        return RunStatus(
            phase=Phase.SUCCEEDED if complete else Phase.FAILED,
            total=self._total,
            succeeded=len(parts.succeeded),
            failed=len(parts.failed),
            reason=None if complete else Reason.FAILED_INDEXES,
        )

    def wait(self, timeout: float | None = None) -> RunStatus:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.status()
            if current.finished:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise still_running(self.name, current, timeout)
            time.sleep(POLL_SECONDS * 5)

    def done(self) -> bool:
        return self.status().finished

    def cancel(self) -> bool:
        return False  # nobody here runs it: cancel it where it runs


def misses_options(opts: RunOptions, total: int, hits: int) -> RunOptions:
    """The options the misses run with: min_success_ratio is the caller's, over all their
    inputs, of which the hits already succeeded. The task only holds the misses, so its
    ratio is what is still needed from them (0.8 of 6 inputs with 3 hits: 2 of the 3)."""
    misses = total - hits
    if opts.min_success_ratio >= 1.0 or misses == 0:
        return opts
    needed = max(0, math.ceil(total * opts.min_success_ratio - 1e-9) - hits)
    return opts.model_copy(update={"min_success_ratio": needed / misses})


def _as_cached(run: MapRun) -> MapRun:
    """A task read back (MapRun.attach) as the CachedRun its submit returned, when it was
    submitted with cache=True; else `run` itself. Tasks from before the hits were
    recorded in the task come back as `run` (their misses only, in their own numbering)."""
    found = read_split(run.task_store)
    if found is None:
        return run
    split, entries = found
    ran = misses_options(run.options, split.total, len(split.hits))
    inner = MapRun(run.name, run.task_store, run.total, run.handle, ran)
    return CachedRun(inner, split, open_store(entries), run.options)


# -- the run the caller sees ------------------------------------------------------------
class _CachedHandle:
    """The inner run's status, counted over the caller's inputs: hits are successes.
    It follows the inner run's current handle, so a retry() needs no new one."""

    def __init__(self, inner: MapRun, hits: int) -> None:
        self._inner = inner
        self._hits = hits
        self.name = inner.name

    def _mapped(self, status: RunStatus) -> RunStatus:
        return replace(
            status, total=status.total + self._hits, succeeded=status.succeeded + self._hits
        )

    def status(self) -> RunStatus:
        return self._mapped(self._inner.handle.status())

    def wait(self, timeout: float | None = None) -> RunStatus:
        return self._mapped(self._inner.handle.wait(timeout))

    def done(self) -> bool:
        return self._inner.handle.done()

    def cancel(self) -> bool:
        return self._inner.handle.cancel()


class CachedRun(MapRun):
    """A run over the caller's inputs of which `cache_hits` came from the cache and
    `cache_misses` ran (as the task `inner`, whose indices number the misses only).
    Every answer here -- status, results, failures, not_run, as_completed, retry and the
    MapTaskError -- is in the caller's numbering: each one that holds indices is answered
    by the inner run and mapped back, none is inherited from MapRun."""

    def __init__(
        self, inner: MapRun, split: CacheSplit, entries: Store, options: RunOptions
    ) -> None:
        hits = len(split.hits)
        super().__init__(
            inner.name, inner.task_store, split.total, _CachedHandle(inner, hits), options
        )
        self.inner = inner
        self._split = split
        self._entries = entries
        self.cache_hits = hits
        self.cache_misses = len(split.misses)

    def __repr__(self) -> str:
        return (
            f"<CachedRun {self.name} {self.cache_hits} cached, {self.cache_misses} run "
            f"at {self.store_url}>"
        )

    def _hit_values(self) -> Iterator[tuple[int, Any]]:
        hits, digests = self._split.hits, self._split.hit_digests

        def fetch(position: int) -> tuple[int, Any]:
            name = digests[position * DIGEST_SIZE : (position + 1) * DIGEST_SIZE].hex()
            value = loads(self._entries.get(name), what=f"cache entry {self._entries.url}/{name}")
            return hits[position], value

        if not hits:
            return
        with ThreadPoolExecutor(min(FETCH_THREADS, len(hits))) as pool:
            yield from pool.map(fetch, range(len(hits)))

    def _caller(self, position: int) -> int:
        """The caller's index of the inner task's index `position`."""
        return int(self._split.misses[position])

    def _caller_error(self, error: RemoteError) -> RemoteError:
        return error.with_index(self._caller(error.index))

    def _mapped(self, value: Any) -> Any:
        return self._caller_error(value) if isinstance(value, RemoteError) else value

    def results(
        self,
        partial: bool | None = None,
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        try:
            ran = self.inner.results(partial, timeout=timeout, return_exceptions=return_exceptions)
        except MapTaskError as exc:
            raise self._caller_failure(exc) from None
        values: list[Any] = [None] * self.total
        for position, value in enumerate(ran):
            values[self._caller(position)] = self._mapped(value)
        for index, value in self._hit_values():
            values[index] = value
        return values

    def as_completed(
        self, *, return_exceptions: bool = False, timeout: float | None = None
    ) -> Iterator[tuple[int, Any]]:
        yield from self._hit_values()
        try:
            for position, value in self.inner.as_completed(
                return_exceptions=return_exceptions, timeout=timeout
            ):
                yield self._caller(position), self._mapped(value)
        except MapTaskError as exc:
            raise self._caller_failure(exc) from None

    def failures(self) -> dict[int, RemoteError]:
        return {self._caller(i): self._caller_error(e) for i, e in self.inner.failures().items()}

    def not_run(self) -> IndexRanges:
        return IndexRanges.of(self._caller(i) for i in self.inner.not_run())

    def raise_for_status(self, status: RunStatus) -> None:
        try:
            self.inner.raise_for_status(self.inner.status())
        except MapTaskError as exc:
            raise self._caller_failure(exc) from None

    def retry(self, fn: Callable[..., Any] | None = None) -> CachedRun:
        """Rerun the misses without a result; a new `fn` also fills the cache under its
        own identity (the values it computes are its, not the old function's)."""
        if fn is not None:
            config = json.loads(self.task_store.get(CONFIG_KEY))
            fn_id = function_identity(fn, self.options.cache_version)
            entries = self._entries.url.rsplit("/", 1)[0] + "/" + fn_id
            self.task_store.put(
                CONFIG_KEY, json.dumps({**config, "function": fn_id, "entries": entries}).encode()
            )
        self.inner.retry(fn)  # the handle follows the inner run's new one
        return self

    def _caller_failure(self, exc: MapTaskError) -> MapTaskError:
        failures = {self._caller(i): self._caller_error(e) for i, e in exc.failures.items()}
        error = MapTaskError(
            failures,
            total=self.total,
            name=exc.name,
            not_run=IndexRanges.of(self._caller(i) for i in exc.not_run),
            succeeded=exc.succeeded + self.cache_hits,
            why=exc.why,
        )
        # The inner error's text counts the task's indices: say it again in the caller's.
        error.args = (
            f"{error}\n\nResults of the {error.succeeded} that succeeded ({self.cache_hits} of "
            f"{self.total} inputs came from the cache) are in .results(partial=True), in "
            "input order; rerun only what is missing with .retry()",
        )
        return error
