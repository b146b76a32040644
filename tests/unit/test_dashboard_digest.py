"""The dashboard's digest of a task's timing records: bounded lanes and bins whatever the
number of workers and records, and the slowest worker always keeps a lane of its own."""

from __future__ import annotations

import json
from pathlib import Path

from kubemap.pages.digest import digest
from kubemap.pages.html import INDEX_TASKS, index_rows, records_section
from kubemap.pages.server import Records, refresh
from kubemap.pages.views import TaskRow
from kubemap.stores import open_store
from kubemap.task.timings import SliceTiming, write_timing


def records(workers: int, per_worker: int, slow: str = "w-57") -> list[SliceTiming]:
    out = []
    for w in range(workers):
        name = f"w-{w}"
        clock = 1000.0
        for s in range(per_worker):
            item = 0.05 if name == slow else 0.01
            out.append(
                SliceTiming(
                    first=(w * per_worker + s) * 10, count=10, attempt=0, worker=name,
                    start=clock, compute=item * 10, ran=10, succeeded=10,
                    slowest=((w * per_worker + s) * 10, item),
                )
            )  # fmt: skip
            clock += item * 10
    return out


def test_many_workers_share_a_lane_but_the_slowest_keeps_its_own() -> None:
    d = digest(records(workers=100, per_worker=5), lanes=10, bins=30)
    names = [lane["worker"] for lane in d["lanes"]]
    assert len(names) == 10 and names[-1] == "91 other workers"
    assert "w-57" in names
    assert all(len(lane["busy"]) == 30 for lane in d["lanes"])
    assert all(0.0 <= b <= 1.0 for lane in d["lanes"] for b in lane["busy"])
    assert d["slowestWorker"]["worker"] == "w-57"
    assert [lane["worker"] for lane in d["lanes"] if lane["straggler"]] == ["w-57"]
    assert len(d["slowest"]) == 10 and len(d["rate"]) == 30


def test_the_digest_does_not_grow_with_the_records() -> None:
    small = json.dumps(digest(records(workers=40, per_worker=5)))
    large = json.dumps(digest(records(workers=40, per_worker=250)))
    assert len(large) < 1.5 * len(small)  # 50x the records


def test_an_empty_task_has_an_empty_digest() -> None:
    d = digest([])
    assert d["slices"] == 0 and d["lanes"] == [] and d["slowestWorker"] is None
    assert "no slice has finished" in records_section(d, (), 0, "")


def test_the_index_lists_the_newest_tasks_and_counts_the_rest() -> None:
    rows = [TaskRow("ns", f"t{i}") for i in range(INDEX_TASKS + 5)]
    tables = index_rows(rows, [])
    assert tables["tasks"].count("<tr data-task=") == INDEX_TASKS
    assert "and 5 older task(s) not listed" in tables["tasks"]


def test_lanes_are_in_the_workers_natural_order() -> None:
    d = digest(records(workers=12, per_worker=1))
    assert [lane["worker"] for lane in d["lanes"]] == [f"w-{i}" for i in range(12)]


def test_a_finished_tasks_records_keep_being_read_until_they_settle(tmp_path: Path) -> None:
    """A record that lands after the first read that saw the task finished (a slow listing, a
    worker writing as the status turns) still reaches the page: the records are final only
    once a read SETTLE seconds after the finish found nothing new."""
    task = open_store(str(tmp_path)).child("t")
    late, *early = records(workers=3, per_worker=1)
    for each in early:
        write_timing(task, each)
    first = refresh(task, Records(), finished=True, settle_seconds=3600)
    write_timing(task, late)
    second = refresh(task, first, finished=True, settle_seconds=3600)
    third = refresh(task, second, finished=True, settle_seconds=3600)
    assert (len(first.timings), len(second.timings), len(third.timings)) == (2, 3, 3)
    assert not third.final  # nothing new, but the hour has not passed: read again next time
    assert refresh(task, third, finished=True, settle_seconds=0.0).final
