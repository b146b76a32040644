"""kubemap.Executor: a concurrent.futures.Executor whose calls run as kubemap runs.

    with kubemap.Executor(backend="kubernetes", max_workers=50, store="s3://b/runs") as ex:
        futures = [ex.submit(score, row) for row in rows]
        best = max(f.result() for f in concurrent.futures.as_completed(futures))

Calls submitted close together (within `batch_delay` seconds) go out as one run, one per
distinct function, so a thousand submits make one MapTask and not a thousand. The user's
exceptions come back as themselves, the caller's own class on every call (with the remote
traceback as __cause__, as ProcessPoolExecutor does); one that cannot be unpickled comes
back as a RemoteError that is also an instance of its class where that class is importable;
a call whose worker died gets a RemoteFailure, and a call its run never ran the run's
stop (kubemap.TimeoutError, CancelledError), as results() raises. retries=N tries a call
that raised up to N more times. Futures resolve
as their slices finish (MapRun.as_completed).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

from kubemap.api.streaming import NOT_RUN
from kubemap.api.submit import submit_validated
from kubemap.errors import CancelledError, KubemapError, RemoteError, TimeoutError
from kubemap.resources.options import validate_options
from kubemap.task.pickling import dumps

__all__ = ["Executor", "RemoteFailure"]

BATCH_DELAY = 0.05  # seconds a submit waits for company before its batch goes out


class RemoteFailure(KubemapError):
    """A call failed outside the user's function (its worker died); `error` says how."""

    def __init__(self, error: RemoteError) -> None:
        super().__init__(str(error))
        self.error = error


class _RemoteTraceback(Exception):
    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


@dataclass(frozen=True)
class _Raised:
    """What a call that raised returns: the exception and its formatted traceback."""

    exception: BaseException
    traceback: str


def _call(
    fn: Callable[..., Any], call: tuple[tuple[Any, ...], dict[str, Any]], retries: int = 0
) -> Any:
    args, kwargs = call
    for _ in range(retries):
        # The run never sees a call's exception (it comes back as a value, to be raised
        # as itself), so its retries are spent here, in the worker.
        try:
            return fn(*args, **kwargs)
        except Exception:
            continue
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        text = "".join(traceback.format_exception(exc))
        try:
            # Checked with the pickler the result travels with, not the stdlib's: a class
            # that came by value (a script's __main__, a function's locals) is a copy in
            # this worker, which stdlib pickle refuses ("not the same object as
            # __main__.MyErr") while cloudpickle sends it back by value, as the caller's own
            # class. Loaded too: a class whose __init__ needs other arguments fails there.
            pickle.loads(dumps(exc))
        except Exception:
            # It cannot travel: a RemoteError, which the caller rebuilds as an instance of
            # the user's class where that class is importable (`except MyErr` still works).
            name = type(exc).__qualname__
            origin = f"{type(exc).__module__}:{name}"
            return _Raised(RemoteError(0, name, _message(exc), text, 1, origin), text)
        return _Raised(exc, text)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} with an unprintable message>"


def _call_any(
    item: tuple[Callable[..., Any], tuple[tuple[Any, ...], dict[str, Any]], int],
) -> Any:
    return _call(*item)


def _call_chunk(fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]) -> list[Any]:
    return [fn(*args) for args in chunk]


@dataclass
class _Call:
    future: futures.Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


class Executor(futures.Executor):
    """submit/map/shutdown over kubemap runs; `options` are those of kubemap.submit
    (store, retries, items_per_pod, image, namespace...); max_workers is parallelism.

    Calls are batched: each batch is one run. A `name` is the prefix of the runs' names
    (`NAME-1`, `NAME-2`, ...), since a task name is taken once per store.

    Args:
        max_workers: Workers at once (the runs' `parallelism`); None: the backend's default.
        backend: `"local"` (default) or `"kubernetes"`.
        batch_delay: Seconds a submit waits for company before its batch goes out as one run.
        **options: The options of `kubemap.submit` (store, retries, items_per_pod, image,
            namespace, cache, name...).

    Raises:
        ValueError: max_workers is 0 or less.
        ConfigError: An option is invalid (validated here, not in a thread).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        backend: str = "local",
        batch_delay: float = BATCH_DELAY,
        **options: Any,
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._options = {"backend": backend, "parallelism": max_workers, **options}
        # Validated once, here, so that a bad option fails in the caller, not in a thread;
        # each batch's run is named <name>-<n> from the name given.
        self._run_options = validate_options(self._options)
        self._name = self._run_options.name
        self._retries = self._run_options.retries
        self._batches = itertools.count(1)
        self._batch_delay = batch_delay
        self._lock = threading.Condition()
        self._pending: list[_Call] = []
        self._shutdown = False
        self._cancelling = False  # shutdown(cancel_futures=True): no run may go on
        self._threads: list[threading.Thread] = []
        self._runs: list[Any] = []  # the runs still being watched
        self._dispatcher: threading.Thread | None = None

    # -- concurrent.futures.Executor -------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        """Schedule `fn(*args, **kwargs)`; calls submitted within `batch_delay` go out as one
        run per function.

        Args:
            fn: The function.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            A Future that resolves as the call's slice finishes: its value, your own
            exception (remote traceback as `__cause__`) or RemoteFailure.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: futures.Future[Any] = futures.Future()
            self._pending.append(_Call(future, fn, args, kwargs))
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="kubemap-executor", daemon=True
                )
                self._dispatcher.start()
            self._lock.notify_all()
            return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """As Executor.map; chunksize > 1 runs that many calls per item, as
        ProcessPoolExecutor does.

        Args:
            fn: The function, called as `fn(*items)` with one item of each iterable.
            *iterables: The arguments, zipped.
            timeout: Seconds the returned iterator waits for each result at most.
            chunksize: Calls per item of the runs.

        Returns:
            An iterator over the results, in order.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = _batched(zip(*iterables, strict=False), chunksize)
        results = super().map(_bind(fn), chunks, timeout=timeout)
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As Executor.shutdown; cancel_futures=True also cancels the runs of the calls
        already running, so no work goes on (their futures, which concurrent.futures cannot
        cancel once running, raise kubemap.CancelledError; finished calls keep their value).

        Args:
            wait: Block until every run finished.
            cancel_futures: Cancel the calls not started and the runs of those running.
        """
        with self._lock:
            self._shutdown = True
            runs: list[Any] = []
            if cancel_futures:
                for call in self._pending:
                    call.future.cancel()
                self._pending.clear()
                self._cancelling = True
                runs = list(self._runs)
            self._lock.notify_all()
            dispatcher = self._dispatcher
        for run in runs:
            _cancel(run)
        if wait:
            if dispatcher is not None:
                dispatcher.join()
            for thread in list(self._threads):
                thread.join()

    # -- batches -----------------------------------------------------------------------
    def _dispatch(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._shutdown:
                    self._lock.wait()
                if not self._pending and self._shutdown:
                    return
            if self._batch_delay and not self._shutdown:
                # Let the calls submitted with it join: every submit notifies the condition,
                # so wait out the whole delay, not just until the next submit.
                deadline = time.monotonic() + self._batch_delay
                with self._lock:
                    while not self._shutdown and (left := deadline - time.monotonic()) > 0:
                        self._lock.wait(left)
            with self._lock:
                batch, self._pending = self._pending, []
            groups: dict[int, list[_Call]] = {}
            for call in batch:
                if call.future.set_running_or_notify_cancel():
                    groups.setdefault(id(call.fn), []).append(call)
            # a function called many times travels once (fn.pkl); calls of functions seen
            # once in the batch (joblib's batches are each their own object) share one
            # run that carries each function with its arguments
            singles = [calls[0] for calls in groups.values() if len(calls) == 1]
            for calls in groups.values():
                if len(calls) > 1 or len(singles) == 1:
                    self._start(calls, bound=True)
            if len(singles) > 1:
                self._start(singles, bound=False)

    def _start(self, calls: list[_Call], *, bound: bool) -> None:
        options = self._run_options
        if self._name:
            options = options.model_copy(update={"name": f"{self._name}-{next(self._batches)}"})
        try:
            if bound:
                items: list[Any] = [(c.args, c.kwargs) for c in calls]
                run = submit_validated(_bound_call(calls[0].fn, self._retries), items, options)
            else:
                items = [(c.fn, (c.args, c.kwargs), self._retries) for c in calls]
                run = submit_validated(_call_any, items, options)
        except BaseException as exc:
            for call in calls:
                call.future.set_exception(exc)
            return
        thread = threading.Thread(
            target=self._watch, args=(run, calls), name=f"kubemap-{run.name}", daemon=True
        )
        with self._lock:
            self._threads.append(thread)
            self._runs.append(run)
            cancelling = self._cancelling
        thread.start()
        if cancelling:  # its batch left before shutdown(cancel_futures=True), its run after
            _cancel(run)

    def _watch(self, run: Any, calls: list[_Call]) -> None:
        try:
            stop: BaseException | None = None
            for index, value in run.as_completed(return_exceptions=True):
                if isinstance(value, RemoteError) and value.type == NOT_RUN:
                    # A call the run never ran raises the run's stop, as results() does:
                    # kubemap.TimeoutError or CancelledError (a failed run's: NotRun).
                    stop = stop or _stop_of(run)
                    if stop is not None:
                        calls[index].future.set_exception(stop)
                        continue
                _resolve(calls[index].future, index, value)
        except BaseException as exc:
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(exc)
        else:
            if self._options.get("store") is None and run.store_url.startswith("file://"):
                with contextlib.suppress(KubemapError):
                    run.delete()  # every future has its value: keep the default store small
        finally:
            with self._lock:
                self._runs.remove(run)
                self._threads.remove(threading.current_thread())


def _cancel(run: Any) -> None:
    # Best effort, run by run: one that cannot be cancelled (finished meanwhile, its
    # cluster unreachable) must not keep the others going.
    with contextlib.suppress(KubemapError):
        run.cancel()


def _stop_of(run: Any) -> BaseException | None:
    try:
        run.raise_for_status(run.status())
    except (TimeoutError, CancelledError) as exc:
        return exc
    except KubemapError:
        pass
    return None


def _resolve(future: futures.Future[Any], index: int, value: Any) -> None:
    if isinstance(value, _Raised):
        exc = value.exception
        if isinstance(exc, RemoteError):
            exc = exc.with_index(index)  # its cause, the remote traceback, comes with it
        else:
            exc.__cause__ = _RemoteTraceback(f'\n"""\n{value.traceback}"""')
        future.set_exception(exc)
    elif isinstance(value, RemoteError):
        future.set_exception(RemoteFailure(value))
    else:
        future.set_result(value)


def _bound_call(fn: Callable[..., Any], retries: int) -> Callable[..., Any]:
    return functools.partial(_call, fn, retries=retries)


def _bind(fn: Callable[..., Any]) -> Callable[..., Any]:
    return functools.partial(_call_chunk, fn)


def _batched(items: Iterable[Any], size: int) -> Iterator[tuple[Any, ...]]:
    iterator = iter(items)
    while chunk := tuple(itertools.islice(iterator, size)):
        yield chunk
