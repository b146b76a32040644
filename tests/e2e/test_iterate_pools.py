"""Iterating on warm pools: the per-item cache, results as they land, and a rerun of the
missing, with pool=. Executions are counted in a file each call appends to (the emulator's
pods are host processes); pods with a watch on kubemap.io/pool: none may start."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import kubemap
import pytest
from e2ekit import NAMESPACE, Operator, opts
from kubemap.api.workerpool import WorkerPool
from kubernetes import client
from test_pools import PoolPods, executions, ready

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed"),
]


@pytest.fixture
def warm(unique: Callable[[str], str]) -> Iterator[WorkerPool]:
    wp = WorkerPool(unique("itpool"), namespace=NAMESPACE, replicas=2, idle_ttl_seconds=0)
    wp.create()
    ready(wp, 2)
    yield wp
    wp.delete()


def logging_fn(log: Path, broken: Path | None = None) -> Callable[[int], int]:
    def fn(x: int) -> int:
        with open(log, "a") as out:
            out.write(f"{x}\n")
        if broken is not None and x % 4 == 2 and broken.exists():
            raise ValueError(f"{x} is broken")
        return 5 * x

    return fn


def test_cache_on_a_pool_runs_only_the_misses(
    core: client.CoreV1Api, operator: Operator, warm: WorkerPool, tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    fn = logging_fn(log)
    version = uuid.uuid4().hex
    with PoolPods(core, warm.name) as pods:
        before = set(pods.seen)
        first = kubemap.submit(fn, range(10), **opts(pool=warm.name, cache_version=version))
        assert first.results() == [5 * x for x in range(10)]
        second = kubemap.submit(fn, range(12), **opts(pool=warm.name, cache_version=version))
        assert (second.cache_hits, second.cache_misses) == (10, 2)
        assert second.results() == [5 * x for x in range(12)]
        again = kubemap.submit(fn, range(12), **opts(pool=warm.name, cache_version=version))
        assert (again.cache_hits, again.results()[-1]) == (12, 55)
        after = set(pods.seen)
    assert executions(log) == [*range(10), 10, 11]  # each item ran once over three runs
    assert after == before  # no pod started


def test_as_completed_on_a_pool_streams_before_the_last_item_starts(
    core: client.CoreV1Api, operator: Operator, warm: WorkerPool, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    started = tmp_path / "started"
    started.mkdir()

    def gated(x: int) -> int:
        (started / str(x)).touch()
        deadline = time.monotonic() + 120
        while x >= 20 and not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return x * 10

    # Leases are guided chunks (40 items, 2 workers: 20, 10, 5, 3, 1, 1): the first chunk
    # (items 0-19) lands while both workers are held at the gate in later chunks.
    run = kubemap.submit(gated, range(40), **opts(pool=warm.name))
    stream = run.as_completed()
    first, value = next(stream)
    assert first < 20 and value == first * 10
    assert not (started / "39").exists()
    gate.touch()
    rest = dict(stream)
    assert {first: value, **rest} == {i: i * 10 for i in range(40)}


def test_retry_on_a_pool_reruns_exactly_the_missing(
    core: client.CoreV1Api, operator: Operator, warm: WorkerPool, tmp_path: Path
) -> None:
    log, broken = tmp_path / "ran.log", tmp_path / "broken"
    broken.touch()
    with PoolPods(core, warm.name) as pods:
        before = set(pods.seen)
        run = kubemap.submit(
            logging_fn(log, broken), range(12), **opts(pool=warm.name, items_per_pod=1)
        )
        status = run.wait(timeout=300)
        assert status.phase.value == "Failed"
        # The first broken index to finish fails the task, and the chunks still running then
        # are stopped (issue 18 #14): which of 2, 6, 10 that is depends on the chunking.
        failed = set(run.failures())
        assert failed and failed <= {2, 6, 10}, failed
        values = run.results(partial=True)
        succeeded = {i for i, value in enumerate(values) if value is not None}
        assert not succeeded & {2, 6, 10} and len(succeeded) < 12
        log.unlink()
        broken.unlink()  # the fix
        run.retry()
        status = run.wait(timeout=300)
        after = set(pods.seen)
    assert status.phase.value == "Succeeded" and (status.succeeded, status.failed) == (12, 0)
    rerun = executions(log)
    assert not set(rerun) & succeeded, rerun  # nothing that succeeded ran again
    assert failed <= set(rerun) and set(rerun) | succeeded == set(range(12))
    assert run.results() == [5 * x for x in range(12)]
    assert after == before
