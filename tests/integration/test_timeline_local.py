"""Timing records and `kubemap timeline` with the local backend and the pod worker: every
slice run leaves one record in the task's store, a planted slow item makes its slice the
slowest and the summary and the page name its worker, a record that cannot be written never
fails a slice, and gc knows timings/ as kubemap's. Counts only, no timing assertions (the
planted item is 100x slower than the others, so which one is slowest is not a race)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import kubemap
import pytest
from kubemap.contract import RESULTS_PREFIX, parse_result_key
from kubemap.errors import StoreError
from kubemap.runtime import worker
from kubemap.stores import open_store
from kubemap.task import data as taskdata
from kubemap.task import timings
from kubemap.task.timings import TIMINGS_PREFIX, read_timings, summarize

pytestmark = pytest.mark.timeout(180)

SLOW_INDEX = 37


def slow_at_37(x: int) -> int:
    time.sleep(0.5 if x == SLOW_INDEX else 0.005)
    return x * 2


def fails_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubemap", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


class Bars(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.bars: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "rect" and "slice" in (found.get("class") or "").split():
            self.bars.append(found)


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    store = tmp_path_factory.mktemp("timeline") / "store"
    run = kubemap.submit(
        slow_at_37, range(200), name="slow-one", store=str(store), parallelism=2, items_per_pod=10
    )
    assert run.results() == [2 * x for x in range(200)]
    return store.as_uri(), run.name


def test_every_slice_has_one_record(slow_run: tuple[str, str]) -> None:
    url, name = slow_run
    task = open_store(url).child(name)
    records = read_timings(task)
    slices = {parse_result_key(k) for k in task.list(RESULTS_PREFIX)}
    assert len(slices) == 20
    assert {(t.first, t.count) for t in records} == slices
    assert len(records) == 20
    assert sum(t.ran for t in records) == 200 and sum(t.succeeded for t in records) == 200
    assert all(t.attempt == 0 and t.outcome == "succeeded" for t in records)
    workers = {t.worker for t in records}
    assert 1 <= len(workers) <= 2 and all(":" in w for w in workers)  # host:pid, locally


def test_the_planted_slow_item_names_its_worker(slow_run: tuple[str, str]) -> None:
    url, name = slow_run
    records = read_timings(open_store(url).child(name))
    (slow,) = [t for t in records if t.first <= SLOW_INDEX < t.first + t.count]
    assert slow.slowest is not None and slow.slowest[0] == SLOW_INDEX
    assert max(records, key=lambda t: t.per_item or 0.0) is slow
    summary = summarize(records)
    assert summary.slowest_item is not None and summary.slowest_item[0] == SLOW_INDEX
    assert summary.slowest_item[2] == slow.worker
    assert summary.slowest_worker is not None and summary.slowest_worker.worker == slow.worker
    assert summary.stragglers >= 1


def test_timeline_summary_and_page(slow_run: tuple[str, str], tmp_path: Path) -> None:
    url, name = slow_run
    records = read_timings(open_store(url).child(name))
    (slow,) = [t for t in records if t.first <= SLOW_INDEX < t.first + t.count]

    printed = cli("timeline", name, "--store", url, "--summary", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert f"slowest worker: {slow.worker} " in printed.stdout
    assert f"slowest item:  index {SLOW_INDEX}," in printed.stdout
    assert not list(tmp_path.iterdir())  # --summary draws nothing

    drawn = cli("timeline", name, "--store", url, cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    page = (tmp_path / f"{name}-timeline.html").read_text()
    parser = Bars()
    parser.feed(page)
    assert len(parser.bars) == 20
    marked = [b for b in parser.bars if "straggler" in (b["class"] or "").split()]
    assert [b["data-first"] for b in marked] == [str(slow.first)]
    assert marked[0]["data-worker"] == slow.worker
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_png_or_a_clear_error(slow_run: tuple[str, str], tmp_path: Path) -> None:
    url, name = slow_run
    done = cli("timeline", name, "--store", url, "--png", "-o", "t.png", cwd=tmp_path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert done.returncode == 1 and "pip install 'kubemap[timeline]'" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_task_without_records_is_explained(tmp_path: Path) -> None:
    store = tmp_path / "store"
    task = open_store(store.as_uri()).child("bare")
    taskdata.write_function(task, abs)
    total = taskdata.write_inputs(task, [1, 2])
    taskdata.write_meta(task, taskdata.TaskMeta.new(total, "abs"))
    done = cli("timeline", "bare", "--store", store.as_uri(), cwd=tmp_path)
    assert done.returncode == 1
    assert "no timing records" in done.stderr and "KUBEMAP_TIMINGS=0" in done.stderr


def _task(tmp_path: Path, name: str = "t") -> kubemap.stores.Store:
    task = open_store((tmp_path / "store").as_uri()).child(name)
    taskdata.write_function(task, abs)
    total = taskdata.write_inputs(task, list(range(-5, 5)))
    taskdata.write_meta(task, taskdata.TaskMeta.new(total, "abs"))
    return task


def test_a_record_that_cannot_be_written_never_fails_the_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    task = _task(tmp_path)
    calls: list[str] = []

    def store_down(store: object, timing: timings.SliceTiming) -> bool:
        calls.append(f"{timing.first}-{timing.count}")
        raise StoreError("the store is down")

    monkeypatch.setattr(timings, "write_timing", store_down)
    outcome = worker.run_slice(task, 0, 10)
    assert len(outcome.succeeded) == 10 and calls == ["0-10"]
    assert dict(taskdata.iter_results(task)) == {i: abs(i - 5) for i in range(10)}
    assert "could not write the timing record of items 0..9" in capsys.readouterr().err


def test_the_switch_turns_recording_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task(tmp_path)
    monkeypatch.setenv("KUBEMAP_TIMINGS", "0")
    worker.run_slice(task, 0, 5)
    monkeypatch.delenv("KUBEMAP_TIMINGS")
    worker.run_slice(task, 5, 5)
    assert [(t.first, t.count) for t in read_timings(task)] == [(5, 5)]


def test_a_failed_item_and_a_retry_are_recorded(tmp_path: Path) -> None:
    task = _task(tmp_path)
    worker.run_slice(task, 0, 10, fn=fails_on_two)
    worker.run_slice(task, 0, 10, fn=abs, attempt=1)  # skips what succeeded
    first, retry = sorted(read_timings(task), key=lambda t: t.attempt)
    assert (first.attempt, first.ran, first.failed, first.outcome) == (0, 10, 1, "failed")
    assert (retry.attempt, retry.ran, retry.skipped, retry.outcome) == (1, 1, 9, "succeeded")


def test_a_pod_worker_records_its_pod_name(tmp_path: Path) -> None:
    task = _task(tmp_path)
    env = {
        **os.environ,
        "HOSTNAME": "slow-one-0-x7k2p",
        "KUBEMAP_TASK_URL": task.url,
        "KUBEMAP_INDEX": "0",
        "KUBEMAP_COUNT": "10",
        "KUBEMAP_TOTAL": "10",
        "KUBEMAP_TERMINATION_LOG": str(tmp_path / "termination.log"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "kubemap.worker"],
        env=env,
        cwd=tmp_path,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (record,) = read_timings(task)
    assert record.worker == "slow-one-0-x7k2p" and record.ran == 10
    assert record.boot is not None  # a pod's first slice: the process start is known


def test_gc_removes_a_task_with_timing_records(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(kubemap.MapTaskError):
        kubemap.map(fails_on_two, [1, 2, 3], name="kept", store=str(store))
    assert list((store / "kept" / TIMINGS_PREFIX.rstrip("/")).iterdir())
    done = cli("gc", "--store", str(store), "--older-than", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "removed kept" in done.stdout and not (store / "kept").exists()


def test_gc_keeps_a_task_with_a_foreign_file_in_timings(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(kubemap.MapTaskError):
        kubemap.map(fails_on_two, [1, 2, 3], name="noted", store=str(store))
    (store / "noted" / "timings" / "my-notes.txt").write_text("mine\n")
    done = cli("gc", "--store", str(store), "--older-than", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "kept noted: timings/my-notes.txt is not a record kubemap writes" in done.stdout
    assert (store / "noted" / "timings" / "my-notes.txt").read_text() == "mine\n"


def test_a_pool_worker_is_named_by_its_pod_and_claims_no_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = _task(tmp_path)
    monkeypatch.setattr(worker, "_booted_pid", None)  # as in a fresh process
    monkeypatch.setenv("KUBEMAP_POOL", "default/warm")
    monkeypatch.setenv("HOSTNAME", "kubemap-pool-warm-5d9f-abcde")
    worker.run_slice(task, 0, 5)
    monkeypatch.delenv("KUBEMAP_POOL")
    monkeypatch.setattr(worker, "_booted_pid", None)
    worker.run_slice(task, 5, 5)
    pooled, local = sorted(read_timings(task), key=lambda t: t.first)
    assert pooled.worker == "kubemap-pool-warm-5d9f-abcde" and pooled.boot is None
    assert local.worker == f"kubemap-pool-warm-5d9f-abcde:{os.getpid()}"
    assert local.boot is not None  # a process's first slice, where /proc says when it began
