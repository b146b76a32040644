"""Stragglers (issue 23, 3a): one warm worker slowed 10x while 2,000 items of 20 ms run on a
pool of 8 workers; the same task with speculation (the default), without it, and with no
slow worker. Asserted are counts only: the task succeeds, the result objects cover every
index exactly once, executions beyond one per index stay within the speculation budget
(10 % of the items), backups were started with speculation and none without. The three
durations and their ratios are printed (bench/tail.py measures them as its job).

The slow worker is chosen by the function itself, on the test cluster where the workers are
host processes: the first process to run an item of the task claims a file (O_EXCL) and
sleeps 10x as long per item from then on, as a worker on a slow node would. Executions are
counted from a log every call appends to after its work (a call cut short by the revoke of
its lease is not an execution).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubemap
import pytest
from chaoskit import NAMESPACE, get_task, opts, report, result_objects, task_pods, wait_finished
from faults import LiveCluster, wait_until
from kubemap.api.workerpool import WorkerPool
from kubernetes import client

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

WORKERS = 8
ITEMS = 2000
ITEM_SECONDS = 0.02
SLOWDOWN = 10
BUDGET = 0.1  # the default speculation budget


@pytest.fixture
def pool8(unique: Callable[[str], str]) -> Iterator[WorkerPool]:
    wp = WorkerPool(unique("tailpool"), namespace=NAMESPACE, replicas=WORKERS, idle_ttl_seconds=0)
    wp.create()
    try:
        wait_until(f"{WORKERS} pool workers ready", lambda: wp.status().ready == WORKERS, 180)
        yield wp
    finally:
        wp.delete()


def straggling(claim: Path | None, log: Path) -> Callable[[int], int]:
    """x -> x * x in ITEM_SECONDS, SLOWDOWN times as long in the process that claims `claim`
    first (None: no slow process); each finished call appends its index to `log`."""

    def work(x: int) -> int:
        slow = False
        if claim is not None:
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
            except FileExistsError:
                pass
            slow = claim.read_text() == str(os.getpid())
        time.sleep(ITEM_SECONDS * (SLOWDOWN if slow else 1))
        with open(log, "a") as out:
            out.write(f"{x}\n")
        return x * x

    return work


def run_once(
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    pool: str,
    name: str,
    fn: Callable[[int], int],
    log: Path,
    speculation: bool,
) -> tuple[float, dict[str, Any], int]:
    """Run the task; (seconds from submit to the end, its status, executions)."""
    began = time.monotonic()
    run = kubemap.submit(fn, range(ITEMS), **opts(name=name, pool=pool, speculation=speculation))
    status = wait_finished(custom, name, 300)
    seconds = time.monotonic() - began
    assert status["phase"] == "Succeeded", status
    body = get_task(custom, name)
    spans = result_objects(body["spec"]["store"]["url"], name)
    covered = sorted(i for start, count in spans for i in range(start, start + count))
    assert covered == list(range(ITEMS)), "result objects do not cover each index once"
    assert run.results()[:5] == [0, 1, 4, 9, 16]
    assert not task_pods(core, name)
    ran = [int(x) for x in log.read_text().split()]
    assert set(ran) == set(range(ITEMS)), "an index never ran"
    return seconds, status, len(ran)


@pytest.mark.timeout(900)
def test_a_slow_worker_is_outrun_by_backup_copies(
    cluster: LiveCluster,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    pool8: WorkerPool,
    tmp_path: Path,
) -> None:
    runs: dict[str, tuple[float, dict[str, Any], int]] = {}
    for label, slow, speculation in (
        ("baseline", False, True),
        ("speculation", True, True),
        ("no-speculation", True, False),
    ):
        log = tmp_path / f"{label}.log"
        fn = straggling(tmp_path / f"{label}.claim" if slow else None, log)
        runs[label] = run_once(
            custom, core, pool8.name, unique(f"tail-{label}"), fn, log, speculation
        )
    base, spec, nospec = runs["baseline"], runs["speculation"], runs["no-speculation"]
    # with speculation: backups ran, and the work repeated stays within the budget
    assert spec[1].get("speculated", 0) > 0, spec[1]
    assert spec[1].get("speculationWasted", 0) <= spec[1]["speculated"]
    assert spec[2] - ITEMS <= BUDGET * ITEMS, f"{spec[2] - ITEMS} items ran twice"
    # without: not one backup, every item ran once
    assert nospec[1].get("speculated", 0) == 0 and nospec[2] == ITEMS
    report(
        f"pool straggler, {ITEMS} items of {ITEM_SECONDS * 1000:.0f} ms on {WORKERS} workers, "
        f"one {SLOWDOWN}x slower: baseline {base[0]:.1f}s; with speculation {spec[0]:.1f}s "
        f"({spec[0] / base[0]:.2f}x; {spec[1].get('speculated', 0)} backups, "
        f"{spec[1].get('speculationWon', 0)} won, {spec[1].get('speculationWasted', 0)} wasted, "
        f"{spec[2] - ITEMS} items ran twice); without {nospec[0]:.1f}s "
        f"({nospec[0] / base[0]:.2f}x)"
    )
