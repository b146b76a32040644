"""Stragglers (issue 23, 3a): one warm worker slowed 10x while 2,000 items of 20 ms run on a
pool of 8 workers; the same task with speculation (the default), without it, and with no
slow worker. The same in pod mode, smaller (each pod is a process start): 64 items of
1 s, 4 per pod, 8 pods at once, one pod slowed 10x. Asserted are counts only: the task
succeeds, the result objects cover every index exactly once, executions beyond one per
index stay within the speculation budget (10 % of the items), backups were started with speculation and none without. The three
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
from chaoskit import (
    NAMESPACE,
    PodLedger,
    get_task,
    opts,
    report,
    result_objects,
    wait_finished,
    wait_settled,
)
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


def straggling(
    claim: Path | None, log: Path, item_seconds: float = ITEM_SECONDS
) -> Callable[[int], int]:
    """x -> x * x in item_seconds, SLOWDOWN times as long in the process that claims `claim`
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
        time.sleep(item_seconds * (SLOWDOWN if slow else 1))
        with open(log, "a") as out:
            out.write(f"{x}\n")
        return x * x

    return work


def run_once(
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    name: str,
    fn: Callable[[int], int],
    log: Path,
    items: int,
    **options: Any,
) -> tuple[float, dict[str, Any], int]:
    """Run the task; (seconds from submit to the end, its status, executions)."""
    with PodLedger(core, name) as ledger:
        began = time.monotonic()
        run = kubemap.submit(fn, range(items), **opts(name=name, **options))
        status = wait_finished(custom, name, 300)
        seconds = time.monotonic() - began
    assert status["phase"] == "Succeeded", status
    assert status["succeeded"] == items and status.get("failed", 0) == 0, status
    body = get_task(custom, name)
    spans = result_objects(body["spec"]["store"]["url"], name)
    covered = sorted(i for start, count in spans for i in range(start, start + count))
    assert covered == list(range(items)), "result objects do not cover each index once"
    assert run.results()[:4] == [0, 1, 4, 9]
    if "pool" in options:
        assert not ledger.attempts, "a pool task made pods"
    else:  # a loser pod is deleted, not left running
        wait_settled(core, name)
        assert len(ledger.attempts) == items // options["items_per_pod"] + status.get(
            "speculated", 0
        ), (len(ledger.attempts), status)
    ran = [int(x) for x in log.read_text().split()]
    assert set(ran) == set(range(items)), "an index never ran"
    return seconds, status, len(ran)


def check_runs(runs: dict[str, tuple[float, dict[str, Any], int]], items: int, what: str) -> None:
    base, spec, nospec = runs["baseline"], runs["speculation"], runs["no-speculation"]
    report(
        f"{what}: baseline {base[0]:.1f}s; with speculation {spec[0]:.1f}s "
        f"({spec[0] / base[0]:.2f}x; {spec[1].get('speculated', 0)} backups, "
        f"{spec[1].get('speculationWon', 0)} won, {spec[1].get('speculationWasted', 0)} wasted, "
        f"{spec[2] - items} items ran twice); without {nospec[0]:.1f}s "
        f"({nospec[0] / base[0]:.2f}x)"
    )
    # with speculation: backups ran, and the work repeated stays within the budget
    assert spec[1].get("speculated", 0) > 0, spec[1]
    assert spec[1].get("speculationWasted", 0) <= spec[1]["speculated"]
    assert spec[2] - items <= BUDGET * items, f"{spec[2] - items} items ran twice"
    # without: not one backup, every item ran once
    assert nospec[1].get("speculated", 0) == 0 and nospec[2] == items


CASES = (("baseline", False, True), ("speculation", True, True), ("no-speculation", True, False))


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
    for label, slow, speculation in CASES:
        log = tmp_path / f"{label}.log"
        fn = straggling(tmp_path / f"{label}.claim" if slow else None, log)
        name = unique(f"tail-{label}")
        runs[label] = run_once(
            custom, core, name, fn, log, ITEMS, pool=pool8.name, speculation=speculation
        )
    check_runs(
        runs,
        ITEMS,
        f"pool straggler, {ITEMS} items of {ITEM_SECONDS * 1000:.0f} ms on {WORKERS} workers, "
        f"one {SLOWDOWN}x slower",
    )


POD_ITEMS, POD_ITEM_SECONDS, PER_POD = 64, 1.0, 4


@pytest.mark.timeout(900)
def test_a_slow_pod_is_outrun_by_a_backup_pod(
    cluster: LiveCluster,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    runs: dict[str, tuple[float, dict[str, Any], int]] = {}
    for label, slow, speculation in CASES:
        log = tmp_path / f"{label}.log"
        fn = straggling(tmp_path / f"{label}.claim" if slow else None, log, POD_ITEM_SECONDS)
        name = unique(f"podtail-{label}")
        runs[label] = run_once(
            custom,
            core,
            name,
            fn,
            log,
            POD_ITEMS,
            parallelism=WORKERS,
            items_per_pod=PER_POD,
            speculation=speculation,
        )
    check_runs(
        runs,
        POD_ITEMS,
        f"pod straggler, {POD_ITEMS} items of {POD_ITEM_SECONDS * 1000:.0f} ms, {PER_POD} per "
        f"pod, {WORKERS} pods at once, one {SLOWDOWN}x slower",
    )
