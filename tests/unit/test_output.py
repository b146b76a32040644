"""The kept-output format (kubemap.task.output): bounded head and tail, the object's
header and offsets, and which objects hold an index. Pure, no I/O but a dict store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubemap.task import output as kept
from kubemap.task.output import HeadTail, KeptItem, SliceOutput


@pytest.mark.parametrize(
    ("pieces", "limit", "head", "expected", "cut"),
    [
        ([b"abc"], 10, 4, b"abc", 0),
        ([b"0123456789"], 10, 4, b"0123456789", 0),
        ([b"0123", b"456789AB"], 10, 4, b"0123" + kept.cut_marker(2) + b"6789AB", 2),
        ([b"x"] * 100, 10, 4, b"xxxx" + kept.cut_marker(90) + b"xxxxxx", 90),
    ],
)
def test_head_and_tail_are_kept_and_the_cut_is_marked(
    pieces: list[bytes], limit: int, head: int, expected: bytes, cut: int
) -> None:
    bound = HeadTail(limit, head)
    for piece in pieces:
        bound.feed(piece)
    assert bound.kept() == (expected, cut)


def test_a_slice_output_round_trips_and_names_each_indexs_bytes() -> None:
    out = SliceOutput(10, 5, 2, "pod-a")
    out.add(10, b"ten\n", 0, 0.5)
    out.add(11, b"", 0, 0.1)  # printed nothing: no item
    out.add(13, b"thirteen\n", 7, None)
    back = SliceOutput.decode(out.encode())
    assert back is not None and (back.first, back.count, back.attempt, back.worker) == (
        10, 5, 2, "pod-a",
    )  # fmt: skip
    assert back.items == [KeptItem(10, 0, 4, 0, 0.5), KeptItem(13, 4, 9, 7, None)]
    assert [back.text_of(i) for i in back.items] == [b"ten\n", b"thirteen\n"]
    assert SliceOutput.decode(b'{"v":99}\n') is None and SliceOutput.decode(b"junk") is None


def test_a_container_slice_shares_its_output_among_its_indices() -> None:
    out = SliceOutput(4, 3, 0, "box")
    out.share(b"all\n", 0, 1.0)
    assert [(i.index, i.offset, i.length) for i in out.items] == [(4, 0, 4), (5, 0, 4), (6, 0, 4)]


def test_the_slice_limit_shrinks_what_later_indices_keep() -> None:
    out = SliceOutput(0, 100, 0, "w")
    assert out.room() == kept.INDEX_LIMIT
    out.add(0, b"x" * kept.SLICE_LIMIT, 0, None)
    assert out.room() == kept.SPILL_BYTES
    out.add(1, b"x" * kept.SLICE_LIMIT, 0, None)
    assert out.room() == 0
    out.add(2, b"", 12345, None)  # nothing kept, but how much it printed is noted
    assert out.items[-1] == KeptItem(2, 2 * kept.SLICE_LIMIT, 0, 12345, None)
    out.add(3, b"", 0, None)  # printed nothing: no item
    assert len(out.items) == 3


class DictStore:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gets = 0

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if key in self.data:
            return False
        self.data[key] = data
        return True

    def get(self, key: str) -> bytes:
        self.gets += 1
        return self.data[key]

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(k for k in self.data if k.startswith(prefix)))


def test_an_index_is_read_from_every_attempt_that_kept_it_and_nothing_else() -> None:
    store = DictStore()
    for first, attempt, text in [(0, 0, b"a"), (10, 0, b"b"), (10, 1, b"c"), (20, 0, b"d")]:
        out = SliceOutput(first, 10, attempt, "w")
        out.add(first + 3, text, 0, None)
        assert kept.write_output(store, out)  # type: ignore[arg-type]
    twin = SliceOutput(10, 10, 1, "twin")
    twin.add(13, b"e", 0, None)
    assert kept.write_output(store, twin)  # type: ignore[arg-type]
    assert "output/000000000010-10-1.1" in store.data
    assert not kept.write_output(store, SliceOutput(30, 10, 0, "quiet"))  # type: ignore[arg-type]
    found = kept.read_output(store, 13)  # type: ignore[arg-type]
    assert [(k.attempt, k.worker, k.text) for k in found] == [
        (0, "w", b"b"), (1, "w", b"c"), (1, "twin", b"e"),
    ]  # fmt: skip
    assert store.gets == 3  # only the objects whose slice holds index 13
    assert kept.read_output(store, 14) == []  # type: ignore[arg-type]
