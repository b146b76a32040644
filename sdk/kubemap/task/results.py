"""Result objects of one task: write-once, one per slice (or per re-run of part of one).

A result object is b"KMR1" + uint32 length of its index ranges ("0-2,4") + those ranges in
ASCII + one pickle of the list of values in index order, so the indices it holds can be read
without unpickling the values. A signed task's objects start with b"KMS1" instead and end
with the MAC (kubemap.task.signing) of everything before it, bound to the object's key.
See taskdata's CONTRACT for the functions; taskdata re-exports them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from kubemap.contract import RESULTS_PREFIX, parse_result_key, result_key
from kubemap.core.ranges import IndexRanges
from kubemap.errors import CorruptTaskError, SerializationError
from kubemap.stores import Store
from kubemap.task.pickling import describe, dumps, loads
from kubemap.task.signing import MAC_SIZE, Signer, result_role, unseal, unsigned

RESULT_MAGIC = b"KMR1"
SEALED_MAGIC = b"KMS1"  # a signed task's result object: ends with the MAC of what precedes
_HEADER = struct.Struct("<4sI")
_HEAD_READ = 64 * 1024


# -- results -----------------------------------------------------------------------------
def encode_results(values: dict[int, Any], sealed: bool = False) -> bytes:
    """One result object: header with the index ranges, then the values in index order
    (sealed: the KMS1 header; seal_result adds the MAC once the object's key is known)."""
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
    magic = SEALED_MAGIC if sealed else RESULT_MAGIC
    return _HEADER.pack(magic, len(ranges)) + ranges + body


def seal_result(blob: bytes, signer: Signer | None, start: int, count: int) -> bytes:
    """blob (from encode_results(sealed=True)) with its MAC, for results/<start>-<count>."""
    if signer is None:
        return blob
    return blob + signer.mac(result_role(start, count), blob)


def _decode_header(data: bytes | memoryview, where: str) -> tuple[IndexRanges, int]:
    if len(data) < _HEADER.size:
        raise CorruptTaskError(f"result object {where} is truncated; delete it and rerun")
    magic, length = _HEADER.unpack_from(data)
    if magic not in (RESULT_MAGIC, SEALED_MAGIC):
        raise CorruptTaskError(
            f"{where} is not a kubemap result object (bad header {magic!r}); delete it and rerun"
        )
    end = _HEADER.size + length
    if len(data) < end:
        raise CorruptTaskError(f"result object {where} is truncated; delete it and rerun")
    return IndexRanges.parse(bytes(data[_HEADER.size : end]).decode("ascii")), end


def decode_results(
    data: bytes,
    where: str = "result",
    signer: Signer | None = None,
    key: str | None = None,
) -> tuple[IndexRanges, list[Any]]:
    """The indices and values of one result object; with a signer (and the object's key,
    which its MAC binds) it is unpickled only once its MAC matches."""
    body: bytes | memoryview = data
    if signer is not None:
        if data[:4] != SEALED_MAGIC or key is None:
            raise unsigned(f"result object {where}", signer.task, "its MAC")
        start, count = parse_result_key(key)
        body = unseal(signer.key, signer.task, start, count, data)
    elif data[:4] == SEALED_MAGIC:  # signed, but no key at hand: read it unchecked
        body = memoryview(data)[: max(0, len(data) - MAC_SIZE)]
    ranges, end = _decode_header(body, where)
    values = loads(memoryview(body)[end:], what=f"result object {where}")
    if not isinstance(values, list) or len(values) != len(ranges):
        raise CorruptTaskError(
            f"result object {where} holds {len(values) if isinstance(values, list) else '?'} "
            f"values for {len(ranges)} indices; delete it and rerun"
        )
    return ranges, values


def write_results(
    store: Store, start: int, count: int, values: dict[int, Any], signer: Signer | None = None
) -> bool:
    outside = [i for i in values if not start <= i < start + count]
    if outside:
        raise ValueError(
            f"results for {outside[:5]} are outside the slice [{start}, {start + count})"
        )
    blob = encode_results(values, sealed=signer is not None)
    return store.put_if_absent(result_key(start, count), seal_result(blob, signer, start, count))


def _result_keys(store: Store, prefix: str = "") -> list[str]:
    return [k for k in store.list(RESULTS_PREFIX + prefix) if "/" not in k[len(RESULTS_PREFIX) :]]


def indices_of(store: Store, key: str) -> IndexRanges:
    head = store.get_range(key, 0, _HEAD_READ)
    if len(head) >= _HEADER.size:
        _, length = _HEADER.unpack_from(head)
        if _HEADER.size + length > len(head):
            head = store.get_range(key, 0, _HEADER.size + length)
    return _decode_header(head, f"{store.url}/{key}")[0]


def iter_results(store: Store, signer: Signer | None = None) -> Iterator[tuple[int, Any]]:
    seen = IndexRanges()
    for key in _result_keys(store):
        ranges, values = decode_results(store.get(key), f"{store.url}/{key}", signer, key)
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
