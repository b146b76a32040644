"""How long the dashboard's page of a 1,000,000-item task takes to render in a browser
(issue 22: under 2 s), and what it sends.

    .venv/bin/python bench/dashboard_page.py [--records 10000] [--rounds 5]

Plants a finished task of 1,000,000 items in a temporary local store: one timing record per
slice of 100 items (10,000 records, ~2.5 MB: what the SDK's slicing makes of 1,000,000
items of 10 ms) from 200 workers, one of them three times slower. Serves it with
`kubemap dashboard --store` (the same pages the operator serves) and opens the task page in
headless Chromium (Debian's `chromium`, over the DevTools protocol: tests/docs/chromium.py).
Prints, per round, the time from navigation to the load event and to the slowest worker's
name being on screen, cold (the first open: the records are read and summarised) and warm
(the summary is cached: a finished task's records do not change), and the bytes sent.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from kubemap.core.status import Phase, RunStatus
from kubemap.stores import open_store
from kubemap.task.meta import TaskMeta, write_meta
from kubemap.task.statusfile import write_status
from kubemap.task.timings import SliceTiming, write_timing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "docs"))
from chromium import Browser, Page, find_chromium

TOTAL = 1_000_000
WORKERS = 200
SLOW_WORKER = "w-137"


def plant(root: Path, records: int) -> str:
    name = "million"
    per = TOTAL // records
    task = open_store(str(root)).child(name)
    write_meta(
        task, TaskMeta(total=TOTAL, function="synthetic", created="2026-01-01T00:00:00+00:00")
    )
    write_status(task, RunStatus(Phase.SUCCEEDED, TOTAL, succeeded=TOTAL), running=False)
    clocks = [1_700_000_000.0] * WORKERS
    for s in range(records):
        w = s % WORKERS
        worker = f"w-{w}"
        item = 0.03 if worker == SLOW_WORKER else 0.01
        write_timing(
            task,
            SliceTiming(
                first=s * per, count=per, attempt=0, worker=worker, start=clocks[w],
                fetch=0.02, compute=item * per, write=0.01, ran=per, succeeded=per,
                slowest=(s * per + 3, item * 2), buckets={-27 if item < 0.02 else -20: per},
            ),
        )  # fmt: skip
        clocks[w] += item * per + 0.03
    return name


def open_once(page: Page, url: str) -> tuple[float, float]:
    page.navigate("about:blank")
    start = time.perf_counter()
    page.navigate(url)
    loaded = time.perf_counter() - start
    named = page.poll(f"document.body.innerText.includes('{SLOW_WORKER}')", timeout=30)
    shown = time.perf_counter() - start
    assert named, "the slow worker is not named"
    return loaded, shown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    binary = find_chromium()
    if binary is None:
        sys.exit("no chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="kubemap-bench-dashboard-") as tmp:
        root = Path(tmp) / "store"
        began = time.perf_counter()
        name = plant(root, args.records)
        print(f"planted {args.records:,} timing records of {TOTAL:,} items in "
              f"{time.perf_counter() - began:.1f} s")  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "kubemap", "dashboard", "--no-browser", "--local",
             "--store", str(root)],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            found = re.search(r"http://127\.0\.0\.1:\d+/", server.stdout.readline())
            assert found, "kubemap dashboard printed no URL"
            url = f"{found.group(0)}tasks/-/{name}"
            with Browser.start(binary) as browser:
                page = browser.open()
                cold = open_once(page, url)
                print(f"cold (records read and summarised): load {cold[0]:.2f} s, "
                      f"slow worker on screen {cold[1]:.2f} s")  # fmt: skip
                warm = [open_once(page, url) for _ in range(args.rounds)]
                for i, (loaded, shown) in enumerate(warm):
                    print(f"warm round {i + 1}: load {loaded:.2f} s, on screen {shown:.2f} s")
                median = statistics.median(s for _, s in warm)
                print(
                    f"warm median: {median:.2f} s on screen (target < 2 s: {median / 2:.2f} of it)"
                )
            with urllib.request.urlopen(url, timeout=30) as answer:
                size = len(answer.read())
            raw = sum(p.stat().st_size for p in (root / name / "timings").iterdir())
            print(f"page: {size:,} bytes for {raw:,} bytes of records ({size / raw:.3f} of them)")
        finally:
            os.killpg(server.pid, signal.SIGINT)
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
