"""Per-item result cache: `cache=True` (or `cache_version="v2"`) on map, submit and imap.

An item's entry is keyed by the function's identity and the item's bytes:

    <store>/_cache/<function id>/<item digest>      one pickled value, written once

The function id hashes its code (bytecode, constants, names, nested functions), its
defaults and closure values, the arguments bound by functools.partial, and the
cache_version given. It does not follow the functions it calls: bump cache_version when
one of those changes. The item digest is a BLAKE2b of the item's pickle (a kubemap.File
pickles its URL, size and content tag, so a changed file runs again).

The SDK decides before uploading: it lists the function's entries (one LIST page per
1,000 entries), uploads only the items without one, and runs those: a hit costs no pod and
no worker. Workers fill the cache as they finish (write-once, so a racing duplicate is
harmless), the same way on every backend; entries live beside the tasks, not in them,
so they survive a task's deletion and are shared by local and cluster runs of one store.
A CachedRun maps the task's indices back to the caller's, and reports hits and misses.
A worker learns whether its task is cached from one GET of cache.json (a 404 for the
others), once per worker process and task.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import types
from array import array
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import cloudpickle

from kubemap.api.maprun import MapRun, StoredRun, upload
from kubemap.backends import RunHandle
from kubemap.core.ranges import IndexRanges
from kubemap.core.status import RunStatus
from kubemap.errors import MapTaskError, RemoteError
from kubemap.resources.maptask import RunOptions
from kubemap.stores import KeyNotFound, Store, open_store
from kubemap.task.cacheentries import (
    CACHE_DIR,
    CONFIG_KEY,
    DIGEST_SIZE,
    KEYS_KEY,
    MAP_KEY,
    record_slice,
)
from kubemap.task.pickling import item_encoder, loads

__all__ = ["CACHE_DIR", "CachedRun", "function_identity", "record_slice", "submit_cached"]

FETCH_THREADS = 16


# -- identity ------------------------------------------------------------------------
def function_identity(fn: Callable[..., Any], version: str | None = None) -> str:
    """A hex id that changes when the function's own code, defaults, closure values or
    bound arguments change, or when `version` does."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"kubemap-cache-1\0{version or ''}\0".encode())
    _feed_callable(digest, fn)
    return digest.hexdigest()


def _feed_callable(digest: Any, fn: Any) -> None:
    if isinstance(fn, functools.partial):
        _feed_callable(digest, fn.func)
        digest.update(_stable_pickle((fn.args, fn.keywords)))
        return
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType):
        digest.update(f"{getattr(fn, '__module__', '')}:{fn.__qualname__}\0".encode())
        _feed_code(digest, code)
        digest.update(_stable_pickle((fn.__defaults__, fn.__kwdefaults__)))
        cells = [cell.cell_contents for cell in fn.__closure__ or ()]
        digest.update(_stable_pickle([c for c in cells if not callable(c)]))
        for cell in cells:
            if callable(cell):
                _feed_callable(digest, cell)
        return
    if isinstance(fn, types.MethodType):
        _feed_callable(digest, fn.__func__)
        digest.update(_stable_pickle(fn.__self__))
        return
    call = vars(type(fn)).get("__call__")  # a callable object: its class's code + state
    if getattr(call, "__code__", None) is not None:
        _feed_callable(digest, call)
    digest.update(_stable_pickle(fn))


def _feed_code(digest: Any, code: types.CodeType) -> None:
    # Not marshal: it holds file names and line numbers, and moving code must not miss.
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(digest, const)
        else:
            digest.update(repr(const).encode())


def _stable_pickle(obj: Any) -> bytes:
    try:
        return bytes(cloudpickle.dumps(obj, 5))
    except Exception:
        return repr(obj).encode()  # unpicklable: its repr is the best identity there is


def item_digests(items: Iterable[Any]) -> Iterator[tuple[Any, bytes]]:
    encode = item_encoder()
    for item in items:
        yield item, hashlib.blake2b(encode(item), digest_size=DIGEST_SIZE).digest()


# -- submit ----------------------------------------------------------------------------
@dataclass
class _Split:
    """Which of the caller's indices hit and which run, filled while the inputs stream."""

    present: set[bytes]
    misses: array[int]  # task index -> caller's index
    miss_digests: bytearray  # task index -> item digest
    hits: array[int]  # caller's indices with an entry
    hit_digests: bytearray
    total: int = 0

    def misses_of(self, items: Iterable[Any]) -> Iterator[Any]:
        for index, (item, digest) in enumerate(item_digests(items)):
            self.total = index + 1
            if digest in self.present:
                self.hits.append(index)
                self.hit_digests += digest
            else:
                self.misses.append(index)
                self.miss_digests += digest
                yield item


def submit_cached(fn: Callable[..., Any], inputs: Iterable[Any], opts: RunOptions) -> CachedRun:
    from kubemap.stores import default_store_url

    fn_id = function_identity(fn, opts.cache_version)
    entries = open_store(opts.store or default_store_url()).child(CACHE_DIR).child(fn_id)
    present = {bytes.fromhex(o.key) for o in entries.iter_objects() if _is_digest(o.key)}
    split = _Split(present, array("Q"), bytearray(), array("Q"), bytearray())
    backend, task, name, misses = upload(fn, split.misses_of(inputs), opts)
    del present, split.present  # only the arrays are needed from here on
    # The misses' first (a worker reads its slice's digests by their task index), then the
    # hits', so that MapRun.attach can answer in the caller's numbering too.
    task.put(MAP_KEY, split.misses.tobytes() + split.hits.tobytes())
    task.put(KEYS_KEY, bytes(split.miss_digests) + bytes(split.hit_digests))
    config = {"function": fn_id, "entries": entries.url, "total": split.total}
    counts = {"hits": len(split.hits), "misses": len(split.misses)}
    task.put(CONFIG_KEY, json.dumps({**config, **counts}).encode())
    ran = _misses_options(opts, split.total, len(split.hits))
    if misses:
        handle: RunHandle = backend.start(task, misses, ran, name)
    else:  # every item hit: no run at all, no pod, no worker
        handle = StoredRun(name, task, 0)
    inner = MapRun(name, task, misses, handle, ran)
    return CachedRun(inner, split, entries, opts)


def _misses_options(opts: RunOptions, total: int, hits: int) -> RunOptions:
    """The options the misses run with: min_success_ratio is the caller's, over all their
    inputs, of which the hits already succeeded. The task only holds the misses, so its
    ratio is what is still needed from them (0.8 of 6 inputs with 3 hits: 2 of the 3)."""
    misses = total - hits
    if opts.min_success_ratio >= 1.0 or misses == 0:
        return opts
    needed = max(0, math.ceil(total * opts.min_success_ratio - 1e-9) - hits)
    return opts.model_copy(update={"min_success_ratio": needed / misses})


def attach_cached(run: MapRun) -> MapRun:
    """A task read back (MapRun.attach) as the CachedRun its submit returned, when it was
    submitted with cache=True; else `run` itself. Tasks from before the hits were
    recorded in the task come back as `run` (their misses only, in their own numbering)."""
    try:
        config = json.loads(run.task_store.get(CONFIG_KEY))
    except KeyNotFound:
        return run
    if "misses" not in config:
        return run
    misses, hits = int(config["misses"]), int(config["hits"])
    indices, digests = array("Q"), run.task_store.get(KEYS_KEY)
    indices.frombytes(run.task_store.get(MAP_KEY))
    cut = misses * DIGEST_SIZE
    split = _Split(
        set(),
        indices[:misses],
        bytearray(digests[:cut]),
        indices[misses : misses + hits],
        bytearray(digests[cut : cut + hits * DIGEST_SIZE]),
        total=int(config["total"]),
    )
    ran = _misses_options(run.options, split.total, hits)
    inner = MapRun(run.name, run.task_store, run.total, run.handle, ran)
    return CachedRun(inner, split, open_store(config["entries"]), run.options)


def _is_digest(name: str) -> bool:
    return len(name) == 2 * DIGEST_SIZE and all(c in "0123456789abcdef" for c in name)


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

    def __init__(self, inner: MapRun, split: _Split, entries: Store, options: RunOptions) -> None:
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
