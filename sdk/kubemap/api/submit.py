"""What kubemap.map, kubemap.submit and kubemap.imap do: validate the options once, write
the task's files, start the run on the chosen backend.

    results = kubemap.map(fn, inputs, parallelism=8, retries=2)
    run = kubemap.submit(fn, inputs, backend="kubernetes", store="s3://bucket/runs")
    for value in kubemap.imap(fn, inputs): ...

Writing the task (api.prepare) puts the function, then the inputs, streamed from any
iterable, then task.json in the store; cache=True goes through api.cache, which runs only
the items without a cached result.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

from kubemap.api.cache import submit_cached
from kubemap.api.maprun import MapRun
from kubemap.api.prepare import forget, upload
from kubemap.errors import MapTaskError
from kubemap.resources.options import RunOptions, validate_options

__all__ = ["imap", "map", "submit", "submit_validated"]


def submit(fn: Callable[..., Any], inputs: Iterable[Any], /, **options: Any) -> MapRun:
    """Upload `fn` and `inputs` to the store and start running; return at once."""
    return submit_validated(fn, inputs, validate_options(options))


def submit_validated(fn: Callable[..., Any], inputs: Iterable[Any], opts: RunOptions) -> MapRun:
    """submit() with options validated once, by whichever entry was called."""
    if opts.cache or opts.cache_version is not None:
        return submit_cached(fn, inputs, opts)
    backend, task, name, total = upload(fn, inputs, opts)
    handle = backend.start(task, total, opts, name)
    return MapRun(name, task, total, handle, opts)


def map(
    fn: Callable[..., Any],
    inputs: Iterable[Any],
    /,
    *,
    return_exceptions: bool = False,
    **options: Any,
) -> list[Any]:
    """fn applied to every input, in input order; blocks until done.

    Raises MapTaskError (with the remote traceback) if an input failed beyond its retries;
    results that finished stay in the store (see the error's note). return_exceptions=True
    puts each failed index's RemoteError in its place instead of raising; it also tries
    every input (min_success_ratio defaults to 0 then: no fail-fast). Ctrl-C cancels the
    run, unless detach=True, which leaves a Kubernetes task running (MapRun.attach reads it).
    """
    detach = bool(options.pop("detach", False))  # Ctrl-C leaves a cluster task running
    if return_exceptions:
        options = {"min_success_ratio": 0.0, **options}
    opts = validate_options(options)
    if isinstance(inputs, Sized) and not isinstance(inputs, (str, bytes)) and len(inputs) == 0:
        return []
    run = submit_validated(fn, inputs, opts)
    try:
        status = run.wait()
    except KeyboardInterrupt:
        if not detach:
            run.cancel()
        sys.stderr.write(
            f"kubemap: interrupted; task {run.name} "
            + ("left running (detach=True)" if detach else "cancelled")
            + f"; its results stay in {run.store_url}\n"
        )
        raise
    values = run.results(return_exceptions=return_exceptions)
    if status.failed and not return_exceptions:
        warnings.warn(
            f"{status.failed} of {status.total} inputs of task {run.name} failed (tolerated by "
            f"min_success_ratio={opts.min_success_ratio:g}); their results are None",
            stacklevel=2,
        )
    elif opts.store is None and run.store_url.startswith("file://"):
        forget(run.task_store)  # results returned, nothing lost; keep the default store small
    return values


def imap(
    fn: Callable[..., Any],
    inputs: Iterable[Any],
    /,
    *,
    ordered: bool = True,
    return_exceptions: bool = False,
    **options: Any,
) -> Iterator[Any]:
    """fn over inputs, results streamed as they finish: in input order (ordered=True,
    holding only those that finished ahead of the first missing one) or as they land.

    Submits on the first next(); stopping early (break, close) cancels the run.
    return_exceptions=True yields each failed index's RemoteError in its place and tries
    every input (min_success_ratio defaults to 0 then: no fail-fast). Without it, failed
    indices raise MapTaskError, even tolerated ones (min_success_ratio < 1), once every
    result before them is out: unordered, after every result; ordered, after the results
    before the first index without one.
    """
    if return_exceptions:
        options = {"min_success_ratio": 0.0, **options}

    run = submit_validated(fn, inputs, validate_options(options))
    finished = False
    try:
        pairs = run.as_completed(return_exceptions=return_exceptions)
        if not ordered:
            for _, value in pairs:
                yield value
        else:
            ahead: dict[int, Any] = {}
            expected = 0
            try:
                for index, value in pairs:
                    ahead[index] = value
                    while expected in ahead:
                        yield ahead.pop(expected)
                        expected += 1
            except MapTaskError:
                # raised once every result is out: first hand out those before the gap
                while expected in ahead:
                    yield ahead.pop(expected)
                    expected += 1
                raise
        finished = True
    finally:
        if not finished and not run.status().finished:
            with contextlib.suppress(Exception):
                run.cancel()
        if finished and options.get("store") is None and run.store_url.startswith("file://"):
            forget(run.task_store)  # everything was handed out: keep the default store small
