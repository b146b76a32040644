"""The result cache in the store: how entries are named (function identity, item digest),
the split of a cached task (which indices hit, which ran), and the worker's side: filling
entries as results land. See kubemap.api.cache for the design.
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from kubemap.stores import KeyNotFound, Store, open_store
from kubemap.task.pickling import dumps, item_encoder

CACHE_DIR = "_cache"  # "_" keeps it apart from every task name (DNS-1123 has no "_")
CONFIG_KEY = "cache.json"  # in the task: where its entries go
KEYS_KEY = "cache.keys"  # in the task: the item digest of each of its indices, then the hits'
MAP_KEY = "cache.map"  # in the task: the caller's index of each of its indices, then the hits'
DIGEST_SIZE = 16


_configs: dict[str, tuple[Store, str] | None] = {}


def record_slice(task: Store, start: int, count: int, values: dict[int, Any]) -> int:
    """Write cache entries for the values a worker just computed (if the task is cached);
    returns how many entries it created. Called after the result object is written."""
    if task.url not in _configs:
        if len(_configs) > 64:
            _configs.clear()  # a worker process seldom sees many tasks; keep it bounded
        try:
            config = json.loads(task.get(CONFIG_KEY))
            _configs[task.url] = (open_store(config["entries"]), task.url)
        except KeyNotFound:
            _configs[task.url] = None
    found = _configs[task.url]
    if found is None or not values:
        return 0
    entries = found[0]
    digests = task.get_range(KEYS_KEY, start * DIGEST_SIZE, (start + count) * DIGEST_SIZE)
    created = 0
    for index, value in values.items():
        offset = (index - start) * DIGEST_SIZE
        name = digests[offset : offset + DIGEST_SIZE].hex()
        if len(name) == 2 * DIGEST_SIZE and entries.put_if_absent(name, dumps(value)):
            created += 1
    return created


# -- names of entries ---------------------------------------------------------------
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


@dataclass
class CacheSplit:
    """Which of the caller's indices hit the cache and which run as the task's indices.

    Kept in the task (MAP_KEY, KEYS_KEY, CONFIG_KEY), the misses' first (a worker reads its
    slice's digests by their task index), then the hits', so that MapRun.attach can answer
    in the caller's numbering too."""

    misses: array[int] = field(default_factory=lambda: array("Q"))  # task index -> caller's
    miss_digests: bytearray = field(default_factory=bytearray)  # task index -> item digest
    hits: array[int] = field(default_factory=lambda: array("Q"))  # caller's indices with one
    hit_digests: bytearray = field(default_factory=bytearray)
    total: int = 0


def write_split(task: Store, split: CacheSplit, function_id: str, entries_url: str) -> None:
    task.put(MAP_KEY, split.misses.tobytes() + split.hits.tobytes())
    task.put(KEYS_KEY, bytes(split.miss_digests) + bytes(split.hit_digests))
    config = {"function": function_id, "entries": entries_url, "total": split.total}
    counts = {"hits": len(split.hits), "misses": len(split.misses)}
    task.put(CONFIG_KEY, json.dumps({**config, **counts}).encode())


def read_split(task: Store) -> tuple[CacheSplit, str] | None:
    """The split a cached submit wrote and where its entries live; None for a task that is
    not cached, or was cached before the hits were recorded in the task."""
    try:
        config = json.loads(task.get(CONFIG_KEY))
    except KeyNotFound:
        return None
    if "misses" not in config:
        return None
    misses, hits = int(config["misses"]), int(config["hits"])
    indices, digests = array("Q"), task.get(KEYS_KEY)
    indices.frombytes(task.get(MAP_KEY))
    cut = misses * DIGEST_SIZE
    split = CacheSplit(
        indices[:misses],
        bytearray(digests[:cut]),
        indices[misses : misses + hits],
        bytearray(digests[cut : cut + hits * DIGEST_SIZE]),
        total=int(config["total"]),
    )
    return split, str(config["entries"])


def is_digest(name: str) -> bool:
    return len(name) == 2 * DIGEST_SIZE and all(c in "0123456789abcdef" for c in name)
