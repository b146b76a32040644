"""Reading and writing one task's files in a Store, in the layout of DESIGN.md.

CONTRACT (other modules code against exactly these signatures; `store` is the task's
own prefix, i.e. open_store(base).child(task_name)):

    def write_function(store: Store, fn: Callable[..., Any]) -> None
        # cloudpickle to fn.pkl; SerializationError (index=None) naming the function if it fails
    def read_function(store: Store) -> Callable[..., Any]
    def write_inputs(store: Store, items: Iterable[Any]) -> int
        # streams inputs.bin + inputs.idx (N+1 LE uint64 offsets); returns N;
        # SerializationError(index=i) naming the input that could not be pickled;
        # never holds every item as a separate Python object twice (1,000,000 small
        # inputs under 500 MB peak)
    def read_slice(store: Store, start: int, count: int, total: int | None = None) -> list[Any]
        # two ranged GETs: offsets from inputs.idx, then the bytes from inputs.bin;
        # CorruptTaskError if offsets are out of order / past the end
    def read_total(store: Store) -> int        # N, from task.json (or the size of inputs.idx)
    def write_meta(store: Store, meta: TaskMeta) -> None / read_meta(store) -> TaskMeta
    def write_results(store: Store, start: int, count: int, values: dict[int, Any]) -> bool
        # one write-once object results/<start>-<count> holding the indices of the slice
        # that succeeded (a subset of [start, start+count)); False if it already existed
    def iter_results(store: Store) -> Iterator[tuple[int, Any]]
        # every (index, value) recorded, each index once: a slice's object is write-once
        # (first writer wins), and where objects overlap the one with the lowest key wins
    def succeeded_indexes(store: Store) -> IndexRanges   # from result objects, no values loaded
    def done_in_slice(store: Store, start: int, count: int) -> IndexRanges
        # indices of [start, start+count) that already have a result (one narrow LIST)
    def write_error(store: Store, index: int, record: dict[str, Any]) -> None
        # errors/<index>.json: {"index", "type", "message", "traceback", "attempt"}
    def read_errors(store: Store) -> dict[int, RemoteError]
        # every error record, including indices that succeeded on a later attempt:
        # subtract succeeded_indexes() to get the failures that stand

A result object is b"KMR1" + uint32 length of its index ranges ("0-2,4") + those ranges in
ASCII + one pickle of the list of values in index order, so the indices it holds can be read
without unpickling the values.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kubemap.contract import (
    ERRORS_PREFIX,
    FN_KEY,
    INDEX_ENTRY_SIZE,
    INDEX_KEY,
    INPUTS_KEY,
    RESULTS_PREFIX,
    error_key,
    parse_error_key,
    parse_result_key,
    result_key,
)
from kubemap.core.ranges import IndexRanges
from kubemap.errors import CorruptTaskError, RemoteError, SerializationError
from kubemap.pickling import (
    PROTOCOL,
    by_value_markers,
    describe,
    dumps,
    dumps_function,
    loads,
    slow_dumps,
)
from kubemap.stores import KeyNotFound, Store
from kubemap.taskmeta import TaskMeta, read_meta, read_total, write_meta

__all__ = [
    "TaskMeta",
    "done_in_slice",
    "iter_results",
    "read_errors",
    "read_function",
    "read_meta",
    "read_slice",
    "read_total",
    "succeeded_indexes",
    "write_error",
    "write_function",
    "write_inputs",
    "write_meta",
    "write_results",
]

WRITE_CHUNK = 4 * 1024 * 1024
RESULT_MAGIC = b"KMR1"
_HEADER = struct.Struct("<4sI")
_HEAD_READ = 64 * 1024
_LITTLE = sys.byteorder == "little"
_MAX_OFFSET = 1 << 50  # 1 PiB: an inputs.bin offset past this is garbage


# -- function ----------------------------------------------------------------------------
def write_function(store: Store, fn: Callable[..., Any]) -> None:
    store.put(FN_KEY, dumps_function(fn))


def read_function(store: Store) -> Callable[..., Any]:
    try:
        data = store.get(FN_KEY)
    except KeyNotFound:
        raise CorruptTaskError(
            f"task {store.url} has no {FN_KEY}: it was not submitted in function mode, or "
            "its files were deleted; submit it again"
        ) from None
    fn = loads(data, what=f"the function in {store.url}/{FN_KEY}")
    if not callable(fn):
        raise CorruptTaskError(f"{store.url}/{FN_KEY} holds a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return]


# -- inputs ------------------------------------------------------------------------------
def write_inputs(store: Store, items: Iterable[Any]) -> int:
    """Stream every input to inputs.bin, then the offsets to inputs.idx (written last: a
    task without inputs.idx was not submitted completely)."""
    offsets = array("Q", [0])
    assert offsets.itemsize == INDEX_ENTRY_SIZE
    # The loop is inlined (no per-item helper calls): it runs once per input, 10^6 times.
    append = offsets.append
    fast = pickle.dumps
    markers = by_value_markers()
    position = 0
    pending = bytearray()
    with store.open_writer(INPUTS_KEY) as out:
        for item in items:
            try:
                data = fast(item, PROTOCOL)
            except Exception:
                data = _slow_input(item, len(offsets) - 1)
            else:
                for marker in markers:
                    if marker in data:
                        data = _slow_input(item, len(offsets) - 1)
                        break
            pending += data
            position += len(data)
            append(position)
            if len(pending) >= WRITE_CHUNK:
                out.write(pending)
                pending.clear()
        if pending:
            out.write(pending)
    if not _LITTLE:
        offsets.byteswap()
    store.put(INDEX_KEY, offsets.tobytes())
    return len(offsets) - 1


def _slow_input(item: Any, index: int) -> bytes:
    try:
        return slow_dumps(item)
    except Exception as exc:
        raise SerializationError(
            f"input {index} ({describe(item)}) cannot be pickled: {exc}; make it picklable "
            "or pass something that describes it instead, e.g. a path or a URL",
            index=index,
        ) from exc


def read_slice(store: Store, start: int, count: int, total: int | None = None) -> list[Any]:
    """Items [start, start+count): one ranged GET of their offsets, one of their bytes."""
    if start < 0 or count < 0:
        raise ValueError(f"bad slice start={start} count={count}: both must be >= 0")
    if total is not None and start + count > total:
        raise CorruptTaskError(
            f"slice {start}..{start + count - 1} is past the end of task {store.url} "
            f"({total} items)"
        )
    if count == 0:
        return []
    want = (count + 1) * INDEX_ENTRY_SIZE
    try:
        raw = store.get_range(INDEX_KEY, start * INDEX_ENTRY_SIZE, start * INDEX_ENTRY_SIZE + want)
    except KeyNotFound:
        raise CorruptTaskError(
            f"task {store.url} has no {INDEX_KEY}: it was never submitted completely; "
            "submit it again"
        ) from None
    if len(raw) != want:
        raise CorruptTaskError(
            f"{store.url}/{INDEX_KEY} is too short for items {start}..{start + count - 1} "
            f"(read {len(raw)} of {want} bytes): the task is corrupt or the slice is past "
            "its end; submit it again"
        )
    offsets = array("Q")
    offsets.frombytes(raw)
    if not _LITTLE:
        offsets.byteswap()
    for i in range(count):
        if offsets[i] > offsets[i + 1]:
            raise CorruptTaskError(
                f"{store.url}/{INDEX_KEY} is corrupt: offsets of items {start + i} and "
                f"{start + i + 1} are out of order ({offsets[i]} > {offsets[i + 1]}); "
                "submit the task again"
            )
    low, high = offsets[0], offsets[count]
    if high >= _MAX_OFFSET:
        raise CorruptTaskError(
            f"{store.url}/{INDEX_KEY} is corrupt: item {start + count - 1} ends at byte {high}, "
            f"far past any real {INPUTS_KEY}; submit the task again"
        )
    try:
        blob = store.get_range(INPUTS_KEY, low, high)
    except KeyNotFound:
        raise CorruptTaskError(
            f"task {store.url} has {INDEX_KEY} but no {INPUTS_KEY}; submit it again"
        ) from None
    if len(blob) != high - low:
        raise CorruptTaskError(
            f"{store.url}/{INPUTS_KEY} ends before the offsets in {INDEX_KEY} say "
            f"(bytes {low}..{high} wanted, {len(blob)} read); submit the task again"
        )
    view = memoryview(blob)
    return [
        loads(
            view[offsets[i] - low : offsets[i + 1] - low],
            what=f"input {start + i} of {store.url}",
        )
        for i in range(count)
    ]


# -- results -----------------------------------------------------------------------------
def encode_results(values: dict[int, Any]) -> bytes:
    """One result object: header with the index ranges, then the values in index order."""
    indices = sorted(values)
    ranges = str(IndexRanges.of(indices)).encode("ascii")
    ordered = [values[i] for i in indices]
    try:
        body = dumps(ordered)
    except Exception:
        for index in indices:  # name the first value that fails on its own
            try:
                dumps(values[index])
            except Exception as exc:
                raise SerializationError(
                    f"the result of input {index} ({describe(values[index])}) cannot be "
                    f"pickled: {exc}; return something picklable",
                    index=index,
                ) from exc
        raise
    return _HEADER.pack(RESULT_MAGIC, len(ranges)) + ranges + body


def _decode_header(data: bytes | memoryview, where: str) -> tuple[IndexRanges, int]:
    if len(data) < _HEADER.size:
        raise CorruptTaskError(f"result object {where} is truncated; delete it and rerun")
    magic, length = _HEADER.unpack_from(data)
    if magic != RESULT_MAGIC:
        raise CorruptTaskError(
            f"{where} is not a kubemap result object (bad header {magic!r}); delete it and rerun"
        )
    end = _HEADER.size + length
    if len(data) < end:
        raise CorruptTaskError(f"result object {where} is truncated; delete it and rerun")
    return IndexRanges.parse(bytes(data[_HEADER.size : end]).decode("ascii")), end


def decode_results(data: bytes, where: str = "result") -> tuple[IndexRanges, list[Any]]:
    ranges, end = _decode_header(data, where)
    values = loads(memoryview(data)[end:], what=f"result object {where}")
    if not isinstance(values, list) or len(values) != len(ranges):
        raise CorruptTaskError(
            f"result object {where} holds {len(values) if isinstance(values, list) else '?'} "
            f"values for {len(ranges)} indices; delete it and rerun"
        )
    return ranges, values


def write_results(store: Store, start: int, count: int, values: dict[int, Any]) -> bool:
    outside = [i for i in values if not start <= i < start + count]
    if outside:
        raise ValueError(
            f"results for {outside[:5]} are outside the slice [{start}, {start + count})"
        )
    return store.put_if_absent(result_key(start, count), encode_results(values))


def _result_keys(store: Store, prefix: str = "") -> list[str]:
    return [k for k in store.list(RESULTS_PREFIX + prefix) if "/" not in k[len(RESULTS_PREFIX) :]]


def indices_of(store: Store, key: str) -> IndexRanges:
    head = store.get_range(key, 0, _HEAD_READ)
    if len(head) >= _HEADER.size:
        _, length = _HEADER.unpack_from(head)
        if _HEADER.size + length > len(head):
            head = store.get_range(key, 0, _HEADER.size + length)
    return _decode_header(head, f"{store.url}/{key}")[0]


def iter_results(store: Store) -> Iterator[tuple[int, Any]]:
    seen = IndexRanges()
    for key in _result_keys(store):
        ranges, values = decode_results(store.get(key), f"{store.url}/{key}")
        overlap = ranges & seen
        if not overlap:
            yield from zip(ranges, values, strict=True)
        else:  # overlapping objects (a rerun in other slices): the lowest key wins
            for index, value in zip(ranges, values, strict=True):
                if index not in overlap:
                    yield index, value
        seen = seen | ranges


def succeeded_indexes(store: Store) -> IndexRanges:
    spans: list[tuple[int, int]] = []
    for key in _result_keys(store):
        spans.extend(indices_of(store, key).intervals)
    return IndexRanges.from_spans(spans)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def slice_result_keys(store: Store, start: int, count: int) -> list[str]:
    """Keys of result objects that start inside [start, start+count), listed narrowly:
    only keys sharing the zero-padded digits of start and start+count-1."""
    first = result_key(start, 1).rsplit("-", 1)[0][len(RESULTS_PREFIX) :]
    last = result_key(start + max(count, 1) - 1, 1).rsplit("-", 1)[0][len(RESULTS_PREFIX) :]
    keys = []
    for key in _result_keys(store, _common_prefix(first, last)):
        try:
            key_start, _ = parse_result_key(key)
        except ValueError:
            continue
        if start <= key_start < start + count:
            keys.append(key)
    return keys


def done_in_slice(store: Store, start: int, count: int) -> IndexRanges:
    """Indices of [start, start+count) that already have a result."""
    found = IndexRanges()
    for key in slice_result_keys(store, start, count):
        found = found | indices_of(store, key)
    return found & IndexRanges.span(start, start + count)


# -- errors ------------------------------------------------------------------------------
def write_error(store: Store, index: int, record: dict[str, Any]) -> None:
    store.put(error_key(index), json.dumps({**record, "index": index}).encode())


def read_errors(store: Store) -> dict[int, RemoteError]:
    errors: dict[int, RemoteError] = {}
    for key in store.list(ERRORS_PREFIX):
        try:
            index = parse_error_key(key)
            record = json.loads(store.get(key))
        except (ValueError, KeyNotFound):
            continue  # not an error record, or deleted meanwhile
        record.setdefault("index", index)
        errors[index] = RemoteError.from_record(record)
    return errors
