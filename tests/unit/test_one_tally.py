"""kubemap.core.status.partition and settle: the one split of a task's indices that every
surface counts from (issue 18 item 16)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from kubemap.core.ranges import IndexRanges
from kubemap.core.status import Phase, RunStatus, partition, run_status, settle

sets = st.sets(st.integers(min_value=0, max_value=60)).map(IndexRanges.of)


@given(st.integers(min_value=0, max_value=50), sets, sets, sets)
def test_every_index_is_counted_once_and_the_counts_add_up(
    total: int, succeeded: IndexRanges, failed: IndexRanges, active: IndexRanges
) -> None:
    parts = partition(total, succeeded=succeeded, failed=failed, active=active)
    every = [parts.succeeded, parts.failed, parts.active, parts.not_run]
    assert sum(len(s) for s in every) == total
    union = IndexRanges()
    for one in every:
        assert not (union & one)  # disjoint
        union = union | one
    assert union == IndexRanges.span(0, total)
    assert parts.succeeded == succeeded & IndexRanges.span(0, total)  # a result always wins


def test_a_finished_task_counts_failures_as_recorded_and_results_as_stored() -> None:
    """Error records of indices that later succeeded do not count; an index the record
    failed without an error record (a pod lost on each attempt) does."""
    record = {
        "phase": "Failed",
        "total": 10,
        "succeeded": 6,
        "failed": 2,
        "notRun": 2,
        "succeededIndexes": "0-5",
        "failedIndexes": "6-7",
    }
    status = run_status(record, total=10)
    parts = settle(status, results=IndexRanges.parse("0-5"), errors=IndexRanges.parse("2,6"))
    assert (len(parts.succeeded), len(parts.failed), len(parts.not_run)) == (6, 2, 2)
    assert (status.succeeded, status.failed, status.not_run) == (6, 2, 2)


def test_while_running_an_index_that_failed_once_is_reported_by_its_error_record() -> None:
    status = RunStatus(Phase.RUNNING, total=5, succeeded=1, active=1)
    parts = settle(status, results=IndexRanges.of([0]), errors=IndexRanges.of([3]))
    assert [str(parts.succeeded), str(parts.failed)] == ["0", "3"]


def test_a_running_maptasks_active_pods_run_several_indices_each() -> None:
    """status.active counts pods; the indices they run are total - counted - notRun."""
    record = {"phase": "Running", "total": 100, "succeeded": 20, "active": 3, "notRun": 50}
    status = run_status(record, total=100)
    assert (status.active, status.not_run) == (30, 50)
    assert status.succeeded + status.failed + status.active + status.not_run == 100
