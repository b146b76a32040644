"""A worker pod stopped (SIGTERM) just after it wrote its results reports them (issue 18
item 16): a task stopping at its verdict deletes running pods, and a pod that had written
its results said "nothing recorded", so the operator counted those indices as not run
while the store held them (seen on the test cluster: status 17 succeeded, S3 18)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubemap.contract import EXIT_INFRA_ERROR
from kubemap.core.attempts import Report
from kubemap.core.ranges import IndexRanges
from kubemap.runtime import worker
from kubemap.stores import open_store
from kubemap.task import data as taskdata


def double(x: int) -> int:
    return 2 * x


def environment(task_url: str, log: Path) -> dict[str, str]:
    return {
        "KUBEMAP_TASK_URL": task_url,
        "KUBEMAP_INDEX": "0",
        "KUBEMAP_COUNT": "3",
        "KUBEMAP_TOTAL": "3",
        "KUBEMAP_ATTEMPT": "0",
        "KUBEMAP_TERMINATION_LOG": str(log),
    }


@pytest.mark.parametrize("written", [True, False], ids=["after-the-write", "before-it"])
def test_a_stopped_worker_reports_the_results_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: bool
) -> None:
    task = open_store((tmp_path / "store").as_uri()).child("task")
    taskdata.write_function(task, double)
    total = taskdata.write_inputs(task, [1, 2, 3])
    taskdata.write_meta(task, taskdata.TaskMeta.new(total, "double"))

    def sigterm(*_: Any) -> None:
        raise worker.Terminated()  # what worker._on_sigterm raises, at this moment

    # right after the results are saved (the cache fill comes next), or before any is
    monkeypatch.setattr(worker, "_fill_cache" if written else "_save_results", sigterm)
    log = tmp_path / "termination.log"
    code = worker.main(environment(task.url, log))

    assert code == EXIT_INFRA_ERROR
    in_store = taskdata.succeeded_indexes(task)
    report = Report.parse(log.read_text() if log.exists() else None)
    reported = report.succeeded if report is not None else IndexRanges()
    assert reported == in_store  # what the operator will record is what the store holds
    assert len(in_store) == (3 if written else 0)
