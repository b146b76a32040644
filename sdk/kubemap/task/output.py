"""What a worker printed, kept in the task's store: `kubemap logs NAME --index I` reads it
after the pod is gone, for succeeded and failed indices alike.

Each run of a slice that printed anything writes one write-once object

    <task>/output/<first:012d>-<count>-<attempt>     (".1", ".2"... if a twin wrote first)

made of one JSON header line and the kept bytes after it:

    {"v":1,"first":0,"count":100,"attempt":0,"worker":"pod","items":[[3,120,10123],...]}\n
    <bytes of index 3><bytes of index 7>...

Each item is [index - first, length, microseconds, cut]: the index's kept bytes follow those of
the items before it (stdout and stderr interleaved as written), `cut` (left out when 0) is how
many bytes were dropped from the middle (a "... N bytes cut ..." line marks where), and the
microseconds are how long the index ran. In container mode the pod's command runs the whole
slice at once, so every index of the slice names the same bytes ("shared": true). Indices
that printed nothing have no item, and a slice where none printed writes no object: a quiet
task of 1,000,000 items writes none; a chatty one writes one per slice, with ~12 bytes of
header per index that printed (measured: 1,000,000 local items printing an 18-byte line each
wrote 37 objects, 30.6 MB: 18.9 MB of their text, 11.7 MB of headers).

Bounded: at most INDEX_LIMIT bytes per index (the first HEAD_BYTES and the last, which hold a
traceback), and SLICE_LIMIT per slice; past that, the indices after keep their last
SPILL_BYTES only, and past twice SLICE_LIMIT nothing but how many bytes they printed. KUBEMAP_KEEP_OUTPUT=0 (in the worker's environment) keeps nothing.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubemap.stores import KeyNotFound, Store

OUTPUT_PREFIX = "output/"
OUTPUT_NAME = re.compile(r"(\d{12})-(\d+)-(\d+)(?:\.(\d+))?")  # the names below OUTPUT_PREFIX
ENV_KEEP_OUTPUT = "KUBEMAP_KEEP_OUTPUT"  # "0", "false", "off", "no": keep nothing
# On a container task's pod template: "true" runs its command through kubemap's output keeper
# (the image has kubemap), "false" never; unset: only in the kubemap worker image.
ANNOTATION_KEEP_OUTPUT = "kubemap.io/keep-output"
FORMAT_VERSION = 1
INDEX_LIMIT = 64 * 1024
HEAD_BYTES = 16 * 1024
SLICE_LIMIT = 4 * 1024 * 1024
SPILL_BYTES = 1024
TWINS = 8


def keeping_enabled(environ: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(ENV_KEEP_OUTPUT, "").strip().lower()
    return value not in ("0", "false", "off", "no")


def output_key(first: int, count: int, attempt: int) -> str:
    return f"{OUTPUT_PREFIX}{first:012d}-{count}-{attempt}"


def cut_marker(cut: int) -> bytes:
    return f"\n... {cut} bytes cut ...\n".encode()


def bounded(head: bytes, tail: bytes, size: int) -> tuple[bytes, int]:
    """The kept bytes of an output of `size` bytes whose first bytes are `head` and last
    `tail` (the whole output when head holds it all), and how many bytes were cut."""
    if len(head) >= size:
        return head[:size], 0
    cut = size - len(head) - len(tail)
    return head + cut_marker(cut) + tail, cut


class HeadTail:
    """Keeps the first `head` and the last `limit - head` bytes of a stream fed in pieces."""

    def __init__(self, limit: int = INDEX_LIMIT, head: int = HEAD_BYTES) -> None:
        self.head_limit = min(head, limit)
        self.tail_limit = limit - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.size = 0

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_limit:
            self.tail += data
            if len(self.tail) > 2 * self.tail_limit:  # trim now and then, not per piece
                del self.tail[: len(self.tail) - self.tail_limit]

    def kept(self) -> tuple[bytes, int]:
        tail = bytes(self.tail[-self.tail_limit :]) if self.tail_limit else b""
        if self.size <= len(self.head) + len(tail):  # nothing was dropped
            return bytes(self.head) + tail, 0
        return bounded(bytes(self.head), tail, self.size)


@dataclass(frozen=True)
class KeptItem:
    index: int
    offset: int
    length: int
    cut: int
    seconds: float | None


@dataclass
class SliceOutput:
    """The kept output of one run of the slice [first, first+count), built item by item."""

    first: int
    count: int
    attempt: int
    worker: str
    items: list[KeptItem] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def room(self) -> int:
        """The bytes the next index may keep: INDEX_LIMIT, SPILL_BYTES once the slice has
        used its SLICE_LIMIT, and none past twice that (only how much it printed is noted)."""
        if len(self.body) < SLICE_LIMIT:
            return INDEX_LIMIT
        return SPILL_BYTES if len(self.body) < 2 * SLICE_LIMIT else 0

    def add(self, index: int, kept: bytes, cut: int, seconds: float | None) -> None:
        if not kept and not cut:
            return
        self.items.append(KeptItem(index, len(self.body), len(kept), cut, seconds))
        self.body += kept

    def share(self, kept: bytes, cut: int, seconds: float | None) -> None:
        """Container mode: the slice's one output, named by each of its indices."""
        if not kept:
            return
        self.items = [
            KeptItem(i, 0, len(kept), cut, seconds)
            for i in range(self.first, self.first + self.count)
        ]
        self.body = bytearray(kept)

    def encode(self) -> bytes:
        """The header line (items as [index - first, length, microseconds] plus the cut when
        there is one; offsets follow from the lengths, or are all 0 when `shared`), then the
        bytes: ~12 bytes of header per index that printed."""
        shared = len(self.items) > 1 and all(k.offset == 0 for k in self.items)
        rows = []
        for k in self.items:
            row = [k.index - self.first, k.length, _micros(k.seconds)]
            rows.append([*row, k.cut] if k.cut else row)
        header: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "first": self.first,
            "count": self.count,
            "attempt": self.attempt,
            "worker": self.worker,
            "items": rows,
        }
        if shared:
            header["shared"] = True
        return json.dumps(header, separators=(",", ":")).encode() + b"\n" + bytes(self.body)

    @classmethod
    def decode(cls, data: bytes) -> SliceOutput | None:
        """The object, or None if it is not one this version reads."""
        line, _, body = data.partition(b"\n")
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict) or raw.get("v") != FORMAT_VERSION:
                return None
            first, shared = int(raw["first"]), bool(raw.get("shared"))
            items, offset = [], 0
            for row in raw["items"]:
                length, micros = int(row[1]), row[2]
                seconds = None if micros is None else int(micros) / 1e6
                cut = int(row[3]) if len(row) > 3 else 0
                items.append(KeptItem(first + int(row[0]), offset, length, cut, seconds))
                offset = 0 if shared else offset + length
            return cls(
                first, int(raw["count"]), int(raw["attempt"]), str(raw["worker"]), items,
                bytearray(body),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, IndexError):
            return None

    def text_of(self, item: KeptItem) -> bytes:
        return bytes(self.body[item.offset : item.offset + item.length])


def _micros(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1e6)


def write_output(task: Store, output: SliceOutput) -> bool:
    """Write the object once (nothing if no index printed); a twin of the same attempt gets
    a suffixed key. False if nothing was written. Store errors are the caller's to ignore."""
    if not output.items:
        return False
    key = output_key(output.first, output.count, output.attempt)
    data = output.encode()
    for twin in range(TWINS + 1):
        if task.put_if_absent(key if twin == 0 else f"{key}.{twin}", data):
            return True
    return False


@dataclass(frozen=True)
class KeptOutput:
    """What one run of an index printed."""

    index: int
    attempt: int
    worker: str
    text: bytes
    cut: int
    seconds: float | None


def _covering(task: Store, index: int) -> Iterator[tuple[int, int, str]]:
    """(attempt, twin, key) of the objects whose slice holds `index`."""
    for key in task.list(OUTPUT_PREFIX):
        found = OUTPUT_NAME.fullmatch(key[len(OUTPUT_PREFIX) :])
        if found is None:
            continue
        first, count = int(found.group(1)), int(found.group(2))
        if first > index:
            break  # the keys are sorted by their first index
        if index < first + count:
            yield int(found.group(3)), int(found.group(4) or 0), key


def read_output(task: Store, index: int) -> list[KeptOutput]:
    """Every kept run of `index`, oldest attempt first (one LIST, a GET per run)."""
    kept = []
    for _, _, key in sorted(_covering(task, index)):
        try:
            output = SliceOutput.decode(task.get(key))
        except KeyNotFound:
            continue  # removed meanwhile
        if output is None:
            continue
        for item in output.items:
            if item.index == index:
                text = output.text_of(item)
                kept.append(
                    KeptOutput(index, output.attempt, output.worker, text, item.cut, item.seconds)
                )
    return kept


def output_keys(task: Store) -> list[str]:
    return [
        key for key in task.list(OUTPUT_PREFIX) if OUTPUT_NAME.fullmatch(key[len(OUTPUT_PREFIX) :])
    ]
