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

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kubemap.api.maprun import CachedRun, MapRun, StoredRun, misses_options
from kubemap.api.prepare import upload
from kubemap.backends import RunHandle
from kubemap.resources.options import RunOptions
from kubemap.stores import default_store_url, open_store
from kubemap.task.cacheentries import (
    CACHE_DIR,
    CacheSplit,
    function_identity,
    is_digest,
    item_digests,
    write_split,
)


def _split_while_streaming(
    split: CacheSplit, present: set[bytes], items: Iterable[Any]
) -> Iterator[Any]:
    """The items without an entry, in order, recording hits and misses in `split`."""
    for index, (item, digest) in enumerate(item_digests(items)):
        split.total = index + 1
        if digest in present:
            split.hits.append(index)
            split.hit_digests += digest
        else:
            split.misses.append(index)
            split.miss_digests += digest
            yield item


def submit_cached(fn: Callable[..., Any], inputs: Iterable[Any], opts: RunOptions) -> CachedRun:
    fn_id = function_identity(fn, opts.cache_version)
    entries = open_store(opts.store or default_store_url()).child(CACHE_DIR).child(fn_id)
    present = {bytes.fromhex(o.key) for o in entries.iter_objects() if is_digest(o.key)}
    split = CacheSplit()
    backend, task, name, misses = upload(fn, _split_while_streaming(split, present, inputs), opts)
    del present  # only the split's arrays are needed from here on
    write_split(task, split, fn_id, entries.url)
    ran = misses_options(opts, split.total, len(split.hits))
    if misses:
        handle: RunHandle = backend.start(task, misses, ran, name)
    else:  # every item hit: no run at all, no pod, no worker
        handle = StoredRun(name, task, 0)
    inner = MapRun(name, task, misses, handle, ran)
    return CachedRun(inner, split, entries, opts)
