"""IndexRanges: compressed index sets ("0-3,7"), table by table, checked against set()."""

from __future__ import annotations

import random

import pytest
from kubemap.core.ranges import IndexRanges, RangesSyntaxError


@pytest.mark.parametrize(
    ("text", "members", "canonical"),
    [
        ("", [], ""),
        ("7", [7], "7"),
        ("0-3", [0, 1, 2, 3], "0-3"),
        ("0-3,7", [0, 1, 2, 3, 7], "0-3,7"),
        ("3,1,2", [1, 2, 3], "1-3"),  # unordered, adjacent: merged
        ("0-2,1-5", [0, 1, 2, 3, 4, 5], "0-5"),  # overlapping: merged
        ("4-4", [4], "4"),
        (" 1 , 3-4 ,", [1, 3, 4], "1,3-4"),  # spaces, trailing comma
        ("0-1,3-4,6", [0, 1, 3, 4, 6], "0-1,3-4,6"),
    ],
)
def test_parse_and_format(text: str, members: list[int], canonical: str) -> None:
    ranges = IndexRanges.parse(text)
    assert list(ranges) == members
    assert len(ranges) == len(members)
    assert str(ranges) == canonical
    assert IndexRanges.parse(str(ranges)) == ranges
    assert IndexRanges.of(members) == ranges


@pytest.mark.parametrize("text", ["a", "1-", "-1", "3-1", "1-2-3", "1.5", "0x1"])
def test_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(RangesSyntaxError) as caught:
        IndexRanges.parse(text)
    assert repr(text) in str(caught.value) or text in str(caught.value)


def test_parse_none_is_empty() -> None:
    assert IndexRanges.parse(None) == IndexRanges()
    assert not IndexRanges.parse(None)


@pytest.mark.parametrize(
    ("a", "b", "union", "difference", "intersection"),
    [
        ("0-9", "3-4", "0-9", "0-2,5-9", "3-4"),
        ("0-4", "5-9", "0-9", "0-4", ""),
        ("", "1-3", "1-3", "", ""),
        ("1-3", "", "1-3", "1-3", ""),
        ("0-2,6-8", "2-6", "0-8", "0-1,7-8", "2,6"),
        ("0,2,4,6", "1-5", "0-6", "0,6", "2,4"),
        ("5-10", "0-100", "0-100", "", "5-10"),
    ],
)
def test_algebra(a: str, b: str, union: str, difference: str, intersection: str) -> None:
    left, right = IndexRanges.parse(a), IndexRanges.parse(b)
    assert str(left | right) == union
    assert str(left - right) == difference
    assert str(left & right) == intersection


def test_algebra_matches_python_sets() -> None:
    rng = random.Random(7)
    for _ in range(300):
        a = {rng.randrange(60) for _ in range(rng.randrange(40))}
        b = {rng.randrange(60) for _ in range(rng.randrange(40))}
        ra, rb = IndexRanges.of(a), IndexRanges.of(b)
        assert set(ra | rb) == a | b
        assert set(ra - rb) == a - b
        assert set(ra & rb) == a & b
        assert len(ra) == len(a)
        probe = rng.randrange(-2, 62)
        assert (probe in ra) == (probe in a)


@pytest.mark.parametrize(
    ("text", "n", "first"),
    [
        ("0-3,7", 2, [0, 1]),
        ("0-3,7", 10, [0, 1, 2, 3, 7]),
        ("", 3, []),
        ("5-1000000", 3, [5, 6, 7]),
    ],
)
def test_first_does_not_materialise(text: str, n: int, first: list[int]) -> None:
    assert IndexRanges.parse(text).first(n) == first


def test_membership_of_non_integers_is_false() -> None:
    ranges = IndexRanges.parse("0-3")
    assert "1" not in ranges
    assert None not in ranges


def test_span_and_from_spans() -> None:
    assert IndexRanges.span(3, 3) == IndexRanges()
    assert str(IndexRanges.span(3, 6)) == "3-5"
    assert str(IndexRanges.from_spans([(5, 7), (0, 2), (2, 3), (9, 9)])) == "0-2,5-6"


def test_a_million_indices_stay_small() -> None:
    ranges = IndexRanges.span(0, 1_000_000) - IndexRanges.of([17, 500_000])
    assert str(ranges) == "0-16,18-499999,500001-999999"
    assert len(ranges) == 999_998


@pytest.mark.parametrize("seed", range(20))
def test_of_matches_a_set_for_sorted_unsorted_and_duplicated_indices(seed: int) -> None:
    import random

    rng = random.Random(seed)
    for _ in range(100):
        members = [rng.randrange(60) for _ in range(rng.randrange(25))]
        if rng.random() < 0.5:
            members.sort()
        ranges = IndexRanges.of(iter(members))  # a one-shot iterator, as callers pass
        assert list(ranges) == sorted(set(members))
        assert IndexRanges.parse(str(ranges)) == ranges
