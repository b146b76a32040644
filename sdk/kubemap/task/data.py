"""Reading and writing one task's files in a Store, in kubemap's storage layout (fn.pkl,
inputs.bin, inputs.idx, task.json, results/, errors/: docs/architecture.md draws it).

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
import sys
from array import array
from collections.abc import Callable, Iterable
from typing import Any

from kubemap.contract import (
    ERRORS_PREFIX,
    FN_KEY,
    INDEX_ENTRY_SIZE,
    INDEX_KEY,
    INPUTS_KEY,
    error_key,
    parse_error_key,
)
from kubemap.errors import CorruptTaskError, RemoteError, SerializationError
from kubemap.stores import KeyNotFound, Store
from kubemap.task.meta import TaskMeta, read_meta, read_total, write_meta
from kubemap.task.pickling import (
    PROTOCOL,
    by_value_markers,
    describe,
    dumps_function,
    loads,
    slow_dumps,
)
from kubemap.task.results import (
    decode_results,
    done_in_slice,
    encode_results,
    indices_of,
    iter_results,
    seal_result,
    slice_result_keys,
    succeeded_indexes,
    write_results,
)
from kubemap.task.signing import (
    FN_MAC,
    INPUTS_MAC,
    Signer,
    macs_range,
    unsigned,
    verify,
    verify_slice,
)

__all__ = [
    "TaskMeta",
    "decode_results",
    "done_in_slice",
    "encode_results",
    "indices_of",
    "iter_results",
    "read_errors",
    "read_function",
    "read_meta",
    "read_slice",
    "read_total",
    "seal_result",
    "slice_result_keys",
    "succeeded_indexes",
    "write_error",
    "write_function",
    "write_inputs",
    "write_meta",
    "write_results",
]

WRITE_CHUNK = 4 * 1024 * 1024
_LITTLE = sys.byteorder == "little"
_MAX_OFFSET = 1 << 50  # 1 PiB: an inputs.bin offset past this is garbage


# -- function ----------------------------------------------------------------------------
def write_function(store: Store, fn: Callable[..., Any], signer: Signer | None = None) -> None:
    data = dumps_function(fn)
    store.put(FN_KEY, data)
    if signer is not None:
        store.put(FN_MAC, signer.mac("fn", data))


def read_function(store: Store, signer: Signer | None = None) -> Callable[..., Any]:
    """fn.pkl, unpickled only once its MAC matches when the task is signed."""
    try:
        data = store.get(FN_KEY)
    except KeyNotFound:
        raise CorruptTaskError(
            f"task {store.url} has no {FN_KEY}: it was not submitted in function mode, or "
            "its files were deleted; submit it again"
        ) from None
    if signer is not None:
        try:
            tag = store.get(FN_MAC)
        except KeyNotFound:
            raise unsigned(FN_KEY, signer.task, FN_MAC) from None
        verify(signer.key, signer.task, "fn", data, tag, what=FN_KEY)
    fn = loads(data, what=f"the function in {store.url}/{FN_KEY}")
    if not callable(fn):
        raise CorruptTaskError(f"{store.url}/{FN_KEY} holds a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return]


# -- inputs ------------------------------------------------------------------------------
def write_inputs(store: Store, items: Iterable[Any], signer: Signer | None = None) -> int:
    """Stream every input to inputs.bin, then (signed) their MACs to inputs.mac, then the
    offsets to inputs.idx (written last: a task without it was not submitted completely)."""
    offsets = array("Q", [0])
    assert offsets.itemsize == INDEX_ENTRY_SIZE
    # The loop is inlined (no per-item helper calls): it runs once per input, 10^6 times.
    append = offsets.append
    fast = pickle.dumps
    markers = by_value_markers()
    position = 0
    pending = bytearray()
    macs = signer.item_macs() if signer is not None else None
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
            if macs is not None:
                macs.add(len(offsets) - 1, data)
            pending += data
            position += len(data)
            append(position)
            if len(pending) >= WRITE_CHUNK:
                out.write(pending)
                pending.clear()
        if pending:
            out.write(pending)
    if macs is not None:
        store.put(INPUTS_MAC, bytes(macs.data))
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


def read_slice(
    store: Store, start: int, count: int, total: int | None = None, signer: Signer | None = None
) -> list[Any]:
    """Items [start, start+count): one ranged GET of their offsets, one of their bytes (and,
    signed, one of their MACs, checked before anything is unpickled)."""
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
    blobs = [view[offsets[i] - low : offsets[i + 1] - low] for i in range(count)]
    if signer is not None:
        _verify_items(store, signer, start, blobs)
    return [loads(blobs[i], what=f"input {start + i} of {store.url}") for i in range(count)]


def _verify_items(store: Store, signer: Signer, start: int, blobs: list[memoryview]) -> None:
    lo, hi = macs_range(start, len(blobs))
    try:
        macs = store.get_range(INPUTS_MAC, lo, hi)
    except KeyNotFound:
        raise unsigned(f"input {start}", signer.task, INPUTS_MAC) from None
    verify_slice(signer.key, signer.task, start, list(blobs), macs)


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
