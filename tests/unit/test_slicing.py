"""The local backend's slicing: covers every index once, adapts to item cost, honours items_per_pod."""

from __future__ import annotations

import pytest
from kubemap.core.slicing import ChunkPlanner, worker_count


def drain(planner: ChunkPlanner, seconds_per_item: float | None = None) -> list[tuple[int, int]]:
    slices = []
    while (nxt := planner.next()) is not None:
        slices.append(nxt)
        if seconds_per_item is not None:
            planner.observe(nxt[1], nxt[1] * seconds_per_item + 0.0005)
    return slices


@pytest.mark.parametrize(
    ("total", "parallelism", "items_per_pod", "cost"),
    [
        (0, 2, None, None),
        (1, 2, None, None),
        (7, 3, None, 0.001),
        (100_000, 2, None, 1e-6),
        (2_000, 2, None, 0.001),
        (1_000, 8, None, 1.0),
        (10, 2, 3, None),
        (10, 2, 20, None),
    ],
)
def test_slices_cover_every_index_once_in_order(
    total: int, parallelism: int, items_per_pod: int | None, cost: float | None
) -> None:
    slices = drain(ChunkPlanner(total, parallelism, items_per_pod), cost)
    covered = [i for start, count in slices for i in range(start, start + count)]
    assert covered == list(range(total))
    assert all(count >= 1 for _, count in slices)


def test_items_per_pod_gives_exact_slices() -> None:
    assert drain(ChunkPlanner(10, 4, 3)) == [(0, 3), (3, 3), (6, 3), (9, 1)]


def test_tiny_items_get_few_large_slices() -> None:
    slices = drain(ChunkPlanner(100_000, 2), seconds_per_item=1e-6)
    assert len(slices) <= 40  # a few per worker plus the ramp, not thousands
    assert max(count for _, count in slices) >= 10_000


def test_slow_items_get_slices_of_about_a_second() -> None:
    slices = drain(ChunkPlanner(1_000, 2), seconds_per_item=0.5)
    assert max(count for _, count in slices) <= 2
    assert len(slices) >= 500


def test_first_slices_are_small_until_the_rate_is_known() -> None:
    planner = ChunkPlanner(1_000_000, 4)
    assert [planner.next() for _ in range(4)] == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_last_slices_shrink_so_workers_finish_together() -> None:
    slices = drain(ChunkPlanner(2_000, 2), seconds_per_item=0.0001)
    counts = [count for _, count in slices]
    assert counts[-1] <= 2_000 // 16
    assert max(counts) > counts[-1]


@pytest.mark.parametrize(
    ("total", "parallelism", "items_per_pod", "expected"),
    [(0, 4, None, 0), (3, 8, None, 3), (100, 2, None, 2), (10, 8, 10, 1), (10, 8, 3, 4)],
)
def test_worker_count(
    total: int, parallelism: int, items_per_pod: int | None, expected: int
) -> None:
    assert worker_count(total, parallelism, items_per_pod) == expected


def test_bad_planner_arguments() -> None:
    with pytest.raises(ValueError):
        ChunkPlanner(10, 0)
    with pytest.raises(ValueError):
        ChunkPlanner(-1, 1)
