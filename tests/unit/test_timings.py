"""Timing records (kubemap.task.timings): the record format, its size bound, the summary
read from the records, and the page drawn from them. No clocks are read: the records are
made up, and the tests count what the code made of them."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import pytest
from kubemap.core.parallelism import MAX_PARALLELISM
from kubemap.core.slicing import ChunkPlanner, auto_items_per_pod, chunk_floor, guided_chunk
from kubemap.pages.timeline import render_html, summary_lines
from kubemap.stores import open_store
from kubemap.task import retention
from kubemap.task.timings import (
    TIMING_NAME,
    TIMINGS_PREFIX,
    ItemTimes,
    SliceTiming,
    bucket_of,
    bucket_seconds,
    quantile,
    read_timings,
    recording_enabled,
    stragglers,
    summarize,
    throughput,
    timing_key,
    write_timing,
)


def record(
    first: int,
    count: int,
    *,
    worker: str = "w1",
    start: float = 1000.0,
    per_item: float = 0.01,
    attempt: int = 0,
    failed: int = 0,
    slow: tuple[int, float] | None = None,
) -> SliceTiming:
    items = ItemTimes()
    for index in range(first, first + count):
        items.add(index, slow[1] if slow and slow[0] == index else per_item)
    compute = per_item * count + (slow[1] - per_item if slow else 0.0)
    return SliceTiming(
        first=first,
        count=count,
        attempt=attempt,
        worker=worker,
        start=start,
        fetch=0.002,
        compute=compute,
        write=0.001,
        ran=count,
        succeeded=count - failed,
        failed=failed,
        slowest=items.slowest,
        buckets=dict(items.buckets),
    )


def test_a_record_round_trips_and_stays_small() -> None:
    timing = record(0, 100, worker="warm-pool-7f9c5d8b4-x2x9q", start=1764761000.123456)
    timing = SliceTiming(**{**timing.__dict__, "boot": 0.41})
    data = timing.encode()
    back = SliceTiming.decode(data)
    assert back is not None
    assert (back.first, back.count, back.attempt, back.worker) == (0, 100, 0, timing.worker)
    assert (back.ran, back.succeeded, back.failed, back.boot) == (100, 100, 0, 0.41)
    assert back.buckets == timing.buckets and back.slowest == timing.slowest
    assert len(data) < 320, data


def test_the_histogram_is_bounded_whatever_the_slice_size() -> None:
    items = ItemTimes()
    for index in range(100_000):  # every item time from 1 microsecond to an hour
        items.add(index, 1e-6 * (3.6e9 ** (index / 99_999)))
    assert len(items.buckets) <= 4 * math.ceil(math.log2(3.6e9)) + 1
    timing = SliceTiming(0, 100_000, 0, "w", 0.0, buckets=items.buckets, ran=100_000)
    assert len(timing.encode()) < 2000


@pytest.mark.parametrize("seconds", [1e-6, 3e-4, 0.01, 0.5, 2.0, 3600.0])
def test_a_bucket_names_its_time_within_9_percent(seconds: float) -> None:
    assert abs(bucket_seconds(bucket_of(seconds)) / seconds - 1) < 0.095


def test_quantiles_of_a_merged_histogram() -> None:
    buckets: dict[int, int] = {}
    for _ in range(95):
        b = bucket_of(0.01)
        buckets[b] = buckets.get(b, 0) + 1
    for _ in range(5):
        b = bucket_of(1.0)
        buckets[b] = buckets.get(b, 0) + 1
    p50, p95, p99 = (quantile(buckets, q) for q in (0.5, 0.95, 0.99))
    assert p50 is not None and p95 is not None and p99 is not None
    assert abs(p50 / 0.01 - 1) < 0.1 and abs(p95 / 0.01 - 1) < 0.1 and abs(p99 - 1) < 0.1
    assert quantile({}, 0.5) is None


def test_junk_and_newer_records_are_skipped() -> None:
    assert SliceTiming.decode(b"not json") is None
    assert SliceTiming.decode(b'{"v":2,"first":0}') is None
    assert SliceTiming.decode(b'{"v":1}') is None


def test_keys_are_what_retention_recognises() -> None:
    key = timing_key(12, 30, 2)
    assert key == "timings/000000000012-30-2"
    assert TIMING_NAME.fullmatch(key[len(TIMINGS_PREFIX) :])
    assert TIMING_NAME.fullmatch("000000000012-30-2.3")
    assert not TIMING_NAME.fullmatch("notes.txt")
    assert retention.TASK_DIRS["timings"].fullmatch("000000000012-30-2")


def test_a_twin_attempt_gets_its_own_key() -> None:
    task = open_store("memory://timings-twins").child("t")
    one, two = record(0, 5, worker="a"), record(0, 5, worker="b")
    assert write_timing(task, one) and write_timing(task, two)
    assert list(task.list(TIMINGS_PREFIX)) == [timing_key(0, 5, 0), timing_key(0, 5, 0) + ".1"]
    assert sorted(t.worker for t in read_timings(task)) == ["a", "b"]


def test_the_switch() -> None:
    assert recording_enabled({})
    assert recording_enabled({"KUBEMAP_TIMINGS": "1"})
    for off in ("0", "false", "OFF", "no"):
        assert not recording_enabled({"KUBEMAP_TIMINGS": off})


def test_the_summary_names_the_slow_worker_and_item() -> None:
    timings = [
        record(0, 10, worker="a", start=0.0),
        record(10, 10, worker="b", start=0.0),
        record(20, 10, worker="a", start=0.2),
        record(30, 10, worker="b", start=0.2, slow=(33, 2.0)),
        record(40, 10, worker="c", start=0.0, attempt=1, failed=2),
    ]
    summary = summarize(timings)
    assert (summary.slices, summary.items, summary.succeeded, summary.failed) == (5, 50, 48, 2)
    assert summary.attempts_retried == 1
    assert summary.slowest_worker is not None and summary.slowest_worker.worker == "b"
    assert summary.slowest_item == (33, 2.0, "b")
    assert summary.stragglers == 1 and stragglers(timings) == [timings[3]]
    assert summary.p50 is not None and abs(summary.p50 / 0.01 - 1) < 0.1
    assert summary.items_per_second is not None and summary.items_per_second > 0
    text = "\n".join(summary_lines(summary))
    assert "slowest worker: b" in text and "index 33" in text


def test_microsecond_noise_is_no_straggler() -> None:
    timings = [record(i * 10, 10, per_item=2e-6) for i in range(5)]
    timings.append(record(50, 10, per_item=9e-6))  # 4.5x the median, but 70 us late in all
    assert stragglers(timings) == [] and summarize(timings).stragglers == 0


def test_throughput_accounts_for_every_item() -> None:
    timings = [record(i * 10, 10, start=i * 0.1) for i in range(20)]
    points = list(throughput(timings, bins=30))
    width = points[1][0] - points[0][0]
    assert len(points) == 30
    assert sum(rate * width for _, rate in points) == pytest.approx(200)


class Bars(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.bars: list[dict[str, str | None]] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "rect" and "slice" in (found.get("class") or "").split():
            self.bars.append(found)
        if tag in ("script", "link", "img") and (found.get("src") or found.get("href")):
            self.external.append(tag)


def test_the_page_has_one_bar_per_slice_and_marks_retries_and_stragglers() -> None:
    timings = [
        record(0, 10, worker="a", start=0.0),
        record(10, 10, worker="b", start=0.0, slow=(12, 1.0)),
        record(20, 10, worker="a<&>", start=0.2, attempt=1, failed=1),
    ]
    page = render_html("demo", timings)
    parser = Bars()
    parser.feed(page)
    assert len(parser.bars) == 3 and not parser.external
    classes = [set((bar["class"] or "").split()) for bar in parser.bars]
    assert sum("straggler" in c for c in classes) == 1
    assert sum("retry" in c for c in classes) == 1 and sum("failed" in c for c in classes) == 1
    assert "a&lt;&amp;&gt;" in page and "slowest worker: b" not in page  # escaped, tabled
    assert "<th>slowest worker</th><td>b (" in page


# -- the size at 1,000,000 items ------------------------------------------------------------
RECORD_BYTES = 320  # the bound test_a_record_round_trips_and_stays_small checks


def test_records_of_a_million_items_stay_a_few_megabytes() -> None:
    """With the SDK's automatic slicing, 1,000,000 items of 10 ms make a bounded number of
    slices on every backend, so a bounded number of records."""
    total, seconds = 1_000_000, 0.01
    planner, local = ChunkPlanner(total, workers=8), 0
    while (piece := planner.next()) is not None:
        local += 1
        planner.observe(piece[1], piece[1] * seconds)
    pods = math.ceil(total / auto_items_per_pod(total, MAX_PARALLELISM))
    remaining, leases = total, 0
    while remaining > 0:  # a warm pool of 1,000 workers
        remaining -= guided_chunk(remaining, 1000, floor=chunk_floor(seconds))
        leases += 1
    assert local <= 10_100 and pods <= 20_000 and leases <= 5_000
    assert max(local, pods, leases) * RECORD_BYTES <= 6.5e6
