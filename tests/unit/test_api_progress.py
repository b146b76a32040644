"""The progress bar: automatic only on a terminal, counts finished (and failed) inputs."""

from __future__ import annotations

import io
import time

import pytest
from kubemap.api.progress import ProgressBar, want_progress
from kubemap.core.status import RunStatus
from kubemap.resources.maptask import Phase


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("progress", "stream", "expected"),
    [
        (None, io.StringIO(), False),
        (None, FakeTty(), True),
        (True, io.StringIO(), True),
        (False, FakeTty(), False),
    ],
)
def test_want_progress(progress: bool | None, stream: io.StringIO, expected: bool) -> None:
    assert want_progress(progress, stream) is expected


def test_bar_counts_done_and_failed_and_is_erased_at_the_end() -> None:
    out = FakeTty()
    with ProgressBar(10, "task-1", delay=0.0, stream=out) as bar:
        bar.show(RunStatus(Phase.RUNNING, 10, succeeded=3, failed=1, active=2))
        time.sleep(0.15)  # past tqdm's minimum redraw interval
        bar.show(RunStatus(Phase.RUNNING, 10, succeeded=7, failed=2, active=1))
        text = out.getvalue()
    assert "task-1" in text and "9/10" in text and "failed=2" in text
    last = out.getvalue()[len(text) :]
    assert last.strip() == "" and last.endswith("\r")  # the line is blanked, cursor at its start


def test_a_run_done_within_the_delay_draws_nothing() -> None:
    out = FakeTty()
    with ProgressBar(10, "task-2", delay=1.0, stream=out) as bar:
        bar.show(RunStatus(Phase.RUNNING, 10, succeeded=3, active=2))
        bar.show(RunStatus(Phase.SUCCEEDED, 10, succeeded=10))
    assert out.getvalue() == ""  # a bar drawn here was left on screen above the results
