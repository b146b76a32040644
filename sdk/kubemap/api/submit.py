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
    """Upload `fn` and `inputs` to the store and start running; return at once.

    The function and the inputs are pickled into the task's prefix in the store (your own
    code by value, with cloudpickle), then the backend runs them in slices; the returned
    MapRun follows the run and reads its results back from the store.

    Args:
        fn: The function, called once per input as `fn(item)`.
        inputs: Any iterable (a list, a generator, `kubemap.files(...)`); it is streamed
            into the store, never held whole.
        **options: Keyword-only options, validated before anything is uploaded (the fields
            of `kubemap.RunOptions`):

            - `parallelism`: attempts at once (local processes, pods, or leases on a warm
              pool); default the CPUs here, 10 pods on Kubernetes, and on a pool no bound
              but the pool's workers.
            - `items_per_pod`: inputs per worker slice; default chosen by the SDK
              (`ceil(items / (2 x parallelism))` on Kubernetes, automatic chunks locally).
            - `retries`: retries of each input after its code raised (default 0).
            - `min_success_ratio`: share of inputs that must succeed (default 1.0: fail-fast,
              the first input failed for good stops the run).
            - `timeout`: seconds before the run is stopped (kubemap.TimeoutError).
            - `backend`: `"local"` (default) or `"kubernetes"`.
            - `store`: a directory, `file:///dir` or `s3://bucket/prefix`; default
              `$KUBEMAP_STORE`, else `~/.cache/kubemap/store` (on Kubernetes, the chart's
              `s3.defaultStore`).
            - `name`: the task's name (DNS-1123, at most 40 characters); default
              `<function>-<random>`.
            - `cache`, `cache_version`: reuse per-item results keyed by the function's
              identity (and `cache_version`) and the item's bytes.
            - Kubernetes only: `image`, `namespace`, `resources`, `env`, `node_selector`,
              `tolerations`, `service_account`, `store_endpoint` (the S3 endpoint as the pods
              reach it), `pool` (a warm WorkerPool's name) and `packages` (pip requirements
              the pool's workers install for this task), `queue` (the Kueue LocalQueue that
              admits the pods) and `priority` (their PriorityClass).
            - `speculation`: backup copies of straggling slices on the cluster (default
              True); False when an item's side effects must not happen twice, or a
              `kubemap.Speculation` with its own factor, min_seconds and budget.

    Returns:
        The MapRun of the task (a CachedRun with `cache=True`).

    Raises:
        ConfigError: An option is unknown, out of range, or for Kubernetes on a local run.
        SerializationError: `fn` or an input cannot be pickled.
        StoreError: The store cannot be written.
        ClusterError: On Kubernetes, the cluster cannot be reached or refused the task.
    """
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
    A successful run on the default store deletes its task afterwards.

    Args:
        fn: The function, called once per input.
        inputs: Any iterable of picklable inputs.
        return_exceptions: Put each failed input's RemoteError in its place instead of
            raising, and try every input.
        **options: The options of `kubemap.submit` (parallelism, retries,
            min_success_ratio, backend, store, ...), and `detach=True`.

    Returns:
        The results, in input order (None for failures tolerated by min_success_ratio, with
        a warning).

    Raises:
        MapTaskError: An input failed for good (its `failures`, `not_run` and counts).
        TimeoutError: The run hit its `timeout`.
        KeyboardInterrupt: Ctrl-C; the run was cancelled (unless detach=True).
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

    Args:
        fn: The function, called once per input.
        inputs: Any iterable of picklable inputs.
        ordered: Yield in input order (True) or as results land (False).
        return_exceptions: Yield each failed input's RemoteError in its place, and try
            every input.
        **options: The options of `kubemap.submit`.

    Yields:
        Each input's result (or, with return_exceptions, its RemoteError).
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
