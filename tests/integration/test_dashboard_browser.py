"""`kubemap dashboard` on this machine (no cluster), opened in a real headless Chromium
(Debian's `chromium`, driven over the DevTools protocol by tests/docs/chromium.py: nothing is
downloaded): a running local task's progress moves without a reload, a failed index's
traceback opens, the planted slow item and its worker are named, the full timeline loads.
Screenshots go to a temporary directory (printed), never the repo.

And at 1,000,000 items (synthetic timing records) the task page stays small: what the
browser is sent is counted, and a finished task's records are read from the store once.
The time the page takes to render is a figure, printed by bench/dashboard_page.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kubemap
import pytest
from aiohttp.test_utils import TestClient, TestServer
from kubemap.cli.dashboard import LocalSource
from kubemap.core.status import Phase, RunStatus
from kubemap.pages.digest import LANES
from kubemap.pages.server import DashboardApp, RecordsCache
from kubemap.stores import open_store
from kubemap.task.meta import TaskMeta, write_meta
from kubemap.task.statusfile import write_status
from kubemap.task.timings import SliceTiming, read_timings, write_timing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
from chromium import Browser, Page, find_chromium

pytestmark = pytest.mark.timeout(240)

FAILING, SLOW = 7, 250
ITEMS = 300


def work(x: int) -> int:
    if x == FAILING:
        raise ValueError("seven is planted to fail")
    time.sleep(2.0 if x == SLOW else 0.03)
    return x


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("dashboard-screenshots")
    print(f"\nscreenshots: {where}")
    return where


@pytest.fixture()
def browser() -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium: apt-get install chromium (scripts/docs does)")
    with Browser.start(binary) as started:
        yield started


def start_dashboard(store: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "KUBECONFIG": "/nonexistent"}
    process = subprocess.Popen(
        [sys.executable, "-m", "kubemap", "dashboard", "--no-browser", "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if found is None:
        process.kill()
        raise AssertionError(f"kubemap dashboard printed no URL: {line!r}")
    return process, found.group(0)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def number(page: Page, selector: str) -> int:
    text = page.evaluate(f"document.querySelector({selector!r}).textContent")
    return int(str(text).replace(",", ""))


def test_local_dashboard_of_a_running_task(tmp_path: Path, browser: Browser, shots: Path) -> None:
    store = tmp_path / "store"
    process, url = start_dashboard(store)
    try:
        run = kubemap.submit(
            work, range(ITEMS), store=str(store), name="dash-run", parallelism=2,
            min_success_ratio=0.0,
        )  # fmt: skip
        page = browser.open()
        page.navigate(url)
        assert page.poll("document.querySelector('tr[data-task=\"/dash-run\"] a') !== null")
        page.evaluate("document.querySelector('tr[data-task=\"/dash-run\"] a').click()")
        page.wait_for("Page.loadEventFired")
        assert page.evaluate("location.pathname") == "/tasks/-/dash-run"
        first = number(page, "#succeeded")
        page.screenshot(shots / "task-running.png")
        # The page's own polling moves it: no navigation happens in between.
        moved = page.poll(
            f"Number(document.querySelector('#succeeded').textContent.replace(/,/g, '')) > {first}",
            timeout=60,
        )
        assert moved, f"progress stayed at {first} succeeded"
        assert not [e for e in page.drain() if e.get("method") == "Page.loadEventFired"]

        run.wait()
        assert page.poll("document.querySelector('#phase').textContent !== 'Running'", timeout=30)
        failure = "document.querySelector('details.failure[data-index=\"7\"]')"
        assert page.poll(f"{failure} !== null", timeout=30), "the failed index is not listed"
        assert page.evaluate(f"{failure}.open") is False
        page.evaluate(f"{failure}.querySelector('summary').click()")
        assert page.evaluate(f"{failure}.open") is True
        traceback = page.evaluate(f"{failure}.querySelector('pre').innerText")
        assert "ValueError: seven is planted to fail" in traceback
        assert "Traceback" in traceback and "in work" in traceback
        assert (
            page.evaluate("document.querySelector('#rerun').textContent")
            == "kubemap retry dash-run"
        )

        # The planted slow item is named, and so is the worker that ran it.
        records = read_timings(open_store(str(store)).child("dash-run"))
        slow = next(t for t in records if t.first <= SLOW < t.first + t.count and t.ran)
        named = page.poll(f"document.body.innerText.includes('index {SLOW},')", timeout=30)
        assert named, page.evaluate("document.body.innerText")
        assert (
            page.evaluate("document.querySelector('#slowest-worker b').textContent") == slow.worker
        )
        stragglers = page.evaluate(
            "[...document.querySelectorAll('g.lane.straggler')].map(g => g.dataset.worker)"
        )
        assert stragglers == [slow.worker]
        page.screenshot(shots / "task-finished.png")

        # The full timeline: every slice run as one bar.
        page.evaluate("document.querySelector('#timeline').click()")
        page.wait_for("Page.loadEventFired")
        bars = page.evaluate("document.querySelectorAll('rect.slice').length")
        assert bars == len(records)
        page.screenshot(shots / "timeline.png")
        print(f"screenshots: {sorted(str(p) for p in shots.iterdir())}")
    finally:
        stop(process)


# -- 1,000,000 items ----------------------------------------------------------------------------
def plant_million(root: Path, name: str = "million", *, slices: int = 2000) -> str:
    """A finished task of 1,000,000 items with one timing record per slice of 500 items,
    from 100 workers; worker w-13 is three times slower per item than the others."""
    total, per = 1_000_000, 1_000_000 // slices
    task = open_store(str(root)).child(name)
    write_meta(
        task, TaskMeta(total=total, function="synthetic", created="2026-01-01T00:00:00+00:00")
    )
    write_status(task, RunStatus(Phase.SUCCEEDED, total, succeeded=total), running=False)
    clocks = [1_700_000_000.0] * 100
    for s in range(slices):
        w = s % 100
        item = 0.003 if w == 13 else 0.001
        compute = item * per
        write_timing(
            task,
            SliceTiming(
                first=s * per, count=per, attempt=0, worker=f"w-{w}", start=clocks[w],
                fetch=0.01, compute=compute, write=0.01, ran=per, succeeded=per,
                slowest=(s * per, item * 1.5), buckets={-40 if w != 13 else -34: per},
            ),
        )  # fmt: skip
        clocks[w] += compute + 0.02
    return name


@pytest.mark.asyncio
async def test_a_million_items_send_a_bounded_page_read_once(tmp_path: Path) -> None:
    name = plant_million(tmp_path)
    app = DashboardApp(
        LocalSource(open_store(str(tmp_path))),
        cache=RecordsCache(refresh_seconds=0.0, settle_seconds=0.0),
    )
    async with TestClient(TestServer(app.app)) as client:
        page = await client.get(f"/tasks/-/{name}")
        text = await page.text()
        assert page.status == 200
        again = await client.get(f"/api/tasks/-/{name}", params={"have": "nothing"})
        body = await again.json()
        for _ in range(3):  # settled after the second read: no more reads
            same = await client.get(f"/api/tasks/-/{name}", params={"have": body["version"]})
            unchanged = await same.json()
    print(f"\ntask page of 1,000,000 items: {len(text):,} bytes; JSON with records "
          f"{len(str(body)):,} bytes, without {len(str(unchanged)):,}")  # fmt: skip
    assert len(text.encode()) < 250_000  # 2,000 records would be ~500 KB raw, 10,000 ~2.5 MB
    assert "records" in body and "records" not in unchanged
    assert unchanged["final"] is True
    assert app.cache.reads == 2  # a finished task's records: read, read again to settle, kept
    assert text.count('class="lane') <= LANES
    assert 'data-worker="w-13"' in text and "<b>w-13</b>" in text  # the slow worker, named


def test_dashboard_refuses_a_foreign_host_name(tmp_path: Path) -> None:
    process, url = start_dashboard(tmp_path / "store")
    try:
        request = urllib.request.Request(url, headers={"Host": "attacker.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 421
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.status == 200
    finally:
        stop(process)
