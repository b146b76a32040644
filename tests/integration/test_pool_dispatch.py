"""The warm-pool loop without a cluster: the real dispatcher (aiohttp on loopback) and real
pool workers (threads running kubemap.runtime.poolworker.serve) on a real store (file:// and S3).

Counts what happened: executions per index (each call appends a line to a file), leases,
refused requests. The cluster e2e suite (tests/e2e/test_pools.py) runs the same loop with
the operator, the Deployment and the chart.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubemap.core.ranges import IndexRanges
from kubemap.core.status import Phase
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Mode, StoreRef
from kubemap.resources.workerpool import python_minor
from kubemap.runtime.poolworker import PoolEnv, serve
from kubemap.stores import open_store
from kubemap.task.data import iter_results, write_function, write_inputs
from kubemap.task.meta import TaskMeta, write_meta
from kubemap_operator.pools.dispatch import Dispatcher
from kubemap_operator.pools.server import DispatcherApp
from kubemap_operator.pools.tokens import pool_token
from kubemap_operator.tasks.planner import Limits

KEY = b"test-key"
POOL = ("ns", "p")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Harness:
    dispatcher: Dispatcher
    app: DispatcherApp
    loop: asyncio.AbstractEventLoop
    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def submit(self, name: str, base: str, spec: MapTaskSpec) -> tuple[str, str]:
        key = ("ns", name)
        self.call(
            lambda: self.dispatcher.sync(
                key, f"uid-{name}", spec, MapTaskStatus(), f"{base}/{name}", python_minor(), 1
            )
        )
        return key

    def status(self, key: tuple[str, str]) -> MapTaskStatus:
        return self.call(lambda: self.dispatcher.tasks[key].status)  # type: ignore[no-any-return]

    def wait_finished(self, key: tuple[str, str], timeout: float = 60) -> MapTaskStatus:
        done = threading.Event()

        def check() -> None:
            while not self.status(key).phase.finished and not done.wait(0.05):
                pass

        thread = threading.Thread(target=check, daemon=True)
        thread.start()
        thread.join(timeout)
        done.set()
        status = self.status(key)
        assert status.phase.finished, f"task {key} did not finish in {timeout}s: {status}"
        return status

    def worker(self, name: str, token: str | None = None) -> None:
        env = PoolEnv(self.url, "ns/p", token or pool_token(KEY, "ns", "p", "pool-uid"), name)
        thread = threading.Thread(
            target=serve, args=(env,), kwargs={"stop": self.stop.is_set, "wait": 0.5}, daemon=True
        )
        thread.start()
        self.threads.append(thread)


@pytest.fixture
def harness() -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = _port()

    async def start() -> tuple[Dispatcher, DispatcherApp]:
        dispatcher = Dispatcher(lease_seconds=1.0, limits=Limits(backoff_base_seconds=0.01))
        dispatcher.pool(POOL).uid = "pool-uid"
        app = DispatcherApp(dispatcher, KEY)
        await app.start("127.0.0.1", port)
        return dispatcher, app

    dispatcher, app = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    h = Harness(dispatcher, app, loop, f"http://127.0.0.1:{port}")
    yield h
    h.stop.set()
    for worker in h.threads:
        worker.join(10)
    asyncio.run_coroutine_threadsafe(app.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def counted(log: Path, fail: set[int] | None = None) -> Callable[[int], int]:
    def fn(x: int) -> int:
        with open(log, "a") as out:
            out.write(f"{x}\n")
        if fail and x in fail:
            raise ValueError(f"bad input {x}")
        return 2 * x

    return fn


def upload(base: str, name: str, fn: Callable[..., Any], n: int) -> None:
    task = open_store(base).child(name)
    write_function(task, fn)
    write_inputs(task, range(n))
    write_meta(task, TaskMeta.new(n, "fn"))


def spec_for(base: str, n: int, **kw: Any) -> MapTaskSpec:
    return MapTaskSpec(mode=Mode.FUNCTION, count=n, store=StoreRef(url=base), pool="p", **kw)


def executions(log: Path) -> list[int]:
    return sorted(int(x) for x in log.read_text().split()) if log.exists() else []


def test_workers_run_every_index_once_in_guided_chunks(harness: Harness, tmp_path: Path) -> None:
    base = f"file://{tmp_path}/store"
    log = tmp_path / "calls.log"
    upload(base, "t1", counted(log), 500)
    for i in range(3):
        harness.worker(f"w{i}")
    key = harness.submit("t1", base, spec_for(base, 500))
    status = harness.wait_finished(key)
    assert status.phase is Phase.SUCCEEDED and status.succeeded_indexes == "0-499"
    assert executions(log) == list(range(500))  # every index exactly once
    values = dict(iter_results(open_store(base).child("t1")))
    assert values == {i: 2 * i for i in range(500)}


def test_a_worker_that_stops_leaves_no_heartbeat_thread(harness: Harness, tmp_path: Path) -> None:
    before = sum(t.name == "heartbeat" for t in threading.enumerate())
    harness.worker("w-stop")
    harness.worker("w-stop-2")
    assert sum(t.name == "heartbeat" for t in threading.enumerate()) == before + 2
    harness.stop.set()
    for worker in harness.threads:
        worker.join(10)
    # serve() returned in both: each took its heartbeat thread with it
    assert sum(t.name == "heartbeat" for t in threading.enumerate()) == before


def test_second_task_reuses_the_workers_and_tasks_share_the_pool(
    harness: Harness, tmp_path: Path
) -> None:
    base = f"file://{tmp_path}/store"
    logs = [tmp_path / f"calls{i}.log" for i in range(2)]
    for i, log in enumerate(logs):
        upload(base, f"t{i}", counted(log), 200)
    served: set[str] = set()  # the workers granted a lease
    lease = harness.dispatcher.lease

    async def counted_lease(pool: Any, worker: str, python: str, wait: float) -> Any:
        grant = await lease(pool, worker, python, wait)
        if grant is not None:
            served.add(worker)
        return grant

    # Counted from the workers' first long-poll on: a poll already waiting inside the plain
    # method when the counter went in would be granted uncounted (CI saw {"w1"} so).
    harness.dispatcher.lease = counted_lease  # type: ignore[method-assign]
    harness.worker("w0")
    harness.worker("w1")
    # Both long-polling before the tasks arrive: else, under load, the first worker up can
    # lease every chunk (sized for one live worker) before the second is seen (seen so).
    deadline = time.monotonic() + 30
    while len(harness.call(lambda: harness.dispatcher.live_workers(("ns", "p")))) < 2:
        assert time.monotonic() < deadline, "two workers did not reach the dispatcher"
        time.sleep(0.05)
    keys = [harness.submit(f"t{i}", base, spec_for(base, 200)) for i in range(2)]
    for key in keys:
        assert harness.wait_finished(key).phase is Phase.SUCCEEDED
    assert [executions(log) for log in logs] == [list(range(200))] * 2
    assert served == {"w0", "w1"}


def test_a_lease_that_is_never_reported_expires_and_runs_elsewhere(
    harness: Harness, tmp_path: Path
) -> None:
    base = f"file://{tmp_path}/store"
    log = tmp_path / "calls.log"
    upload(base, "t1", counted(log), 100)
    key = harness.submit("t1", base, spec_for(base, 100))
    http = urllib3.PoolManager()
    token = pool_token(KEY, "ns", "p", "pool-uid")
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Kubemap-Pool": "ns/p",
        "X-Kubemap-Worker": "ghost",
    }
    lost = http.request(
        "POST", f"{harness.url}/v1/lease", json={"python": python_minor()}, headers=headers
    )
    assert lost.status == 200
    grant = lost.json()  # a worker that took a chunk and vanished
    harness.worker("w0")
    status = harness.wait_finished(key)
    assert status.phase is Phase.SUCCEEDED and status.succeeded == 100 and status.failed == 0
    assert executions(log) == list(range(100))  # the ghost ran nothing; w0 ran all once
    late = http.request(
        "POST", f"{harness.url}/v1/report", headers=headers,
        json={"lease": grant["lease_id"], "kind": "ok", "succeeded": "0-99", "failed": ""},
    )  # fmt: skip
    assert late.status == 410  # its lease is gone; the task's record is unchanged


def test_user_failures_spend_retries_like_pods_do(harness: Harness, tmp_path: Path) -> None:
    base = f"file://{tmp_path}/store"
    log = tmp_path / "calls.log"
    upload(base, "t1", counted(log, fail={7}), 50)
    harness.worker("w0")
    key = harness.submit("t1", base, spec_for(base, 50, backoff_limit_per_index=1))
    status = harness.wait_finished(key)
    assert status.phase is Phase.FAILED and status.failed_indexes == "7"
    calls = executions(log)
    assert calls.count(7) == 2  # the first run and one retry, then the budget is spent
    assert all(calls.count(i) <= 1 for i in range(50) if i != 7)
    assert "failed after 2 attempt(s)" in (status.message or "")


def test_foreign_credentials_are_refused(harness: Harness, tmp_path: Path) -> None:
    base = f"file://{tmp_path}/store"
    upload(base, "t1", counted(tmp_path / "calls.log"), 10)
    key = harness.submit("t1", base, spec_for(base, 10))
    http = urllib3.PoolManager()
    attempts = [
        {},  # no credential at all
        {"Authorization": "Bearer nope", "X-Kubemap-Pool": "ns/p", "X-Kubemap-Worker": "x"},
        {  # the token of another pool
            "Authorization": f"Bearer {pool_token(KEY, 'ns', 'other', 'pool-uid')}",
            "X-Kubemap-Pool": "ns/p",
            "X-Kubemap-Worker": "x",
        },
    ]
    answers = [
        http.request(
            "POST", f"{harness.url}/v1/lease", json={"python": python_minor()}, headers=headers
        ).status
        for headers in attempts
    ]
    assert answers == [401, 401, 401]
    assert harness.status(key).active == 0 and not harness.dispatcher.tasks[key].leases


def test_a_recovered_task_skips_what_the_store_already_holds(
    harness: Harness, tmp_path: Path
) -> None:
    """After an operator restart the status may lag the store: nothing runs twice."""
    base = f"file://{tmp_path}/store"
    log = tmp_path / "calls.log"
    upload(base, "t1", counted(log), 40)
    task = open_store(base).child("t1")
    from kubemap.runtime.worker import run_slice

    run_slice(task, 0, 25, fn=counted(log))  # results a previous dispatcher never recorded
    before = executions(log)
    key = ("ns", "t1")
    started = MapTaskStatus(phase=Phase.RUNNING, start_time="2026-01-01T00:00:00Z", total=40)
    harness.call(
        lambda: harness.dispatcher.sync(
            key, "uid", spec_for(base, 40), started, f"{base}/t1", python_minor(), 1
        )
    )
    harness.worker("w0")
    status = harness.wait_finished(key)
    assert status.phase is Phase.SUCCEEDED and status.succeeded == 40
    assert executions(log) == sorted(before + list(range(25, 40)))  # 0-24 not run again


def timed(log: Path, seconds: float) -> Callable[[int], int]:
    """Logs 'start i t' and 'end i t' around a sleep: shows when the function ran."""

    def fn(x: int) -> int:
        with open(log, "a") as out:
            out.write(f"start {x} {time.time()}\n")
        time.sleep(seconds)
        with open(log, "a") as out:
            out.write(f"end {x} {time.time()}\n")
        return 2 * x

    return fn


def events(log: Path, kind: str, after: float = 0.0) -> list[int]:
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return sorted(int(i) for k, i, t in lines if k == kind and float(t) > after)


def stored(base: str, name: str) -> list[int]:
    return sorted(i for i, _ in iter_results(open_store(base).child(name)))


def test_cancel_takes_the_leases_back_and_the_workers_stop_the_function(
    harness: Harness, tmp_path: Path
) -> None:
    """Issue 18 #14: a cancelled pool task went on running (and writing) its leased chunks
    for as long as they took, and the pool's next task waited behind them."""
    base = f"file://{tmp_path}/store"
    log = tmp_path / "calls.log"
    upload(base, "slow", timed(log, 0.2), 40)
    harness.worker("w0")
    harness.worker("w1")
    deadline = time.monotonic() + 30
    while len(harness.call(lambda: harness.dispatcher.live_workers(POOL))) < 2:
        assert time.monotonic() < deadline, "two workers did not reach the dispatcher"
        time.sleep(0.05)
    spec = spec_for(base, 40)
    key = harness.submit("slow", base, spec)  # chunks of 20 and 10 items: 4 s and 2 s
    while len(events(log, "end")) < 2:  # a few items finish before the cancel
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.02)
    time.sleep(0.15)  # they finished well before the cancel (the margin below)
    asked = time.time()

    def cancel() -> MapTaskStatus:
        task = harness.dispatcher.tasks[key]
        suspended = spec.model_copy(update={"suspend": True})
        harness.dispatcher.sync(key, task.uid, suspended, task.status, task.task_url, None, 2)
        return task.status

    harness.call(cancel)
    cancelled_at = time.time()
    # The verdict waits (at most STOP_WAIT_SECONDS) for the workers to stop and say what
    # finished, so it counts what is kept.
    final = harness.wait_finished(key, timeout=10)
    verdict_after = time.time() - cancelled_at
    assert final.phase is Phase.CANCELLED
    grace = 1.0
    time.sleep(grace)
    written = stored(base, "slow")
    busy_after = None
    while time.time() < cancelled_at + 5:  # longer than the rest of either chunk
        workers = harness.call(lambda: list(harness.dispatcher.pools[POOL].workers.values()))
        if busy_after is None and not any(w.busy for w in workers):
            busy_after = time.time() - cancelled_at
        time.sleep(0.05)
    late_starts = events(log, "start", after=cancelled_at + grace)
    late_ends = events(log, "end", after=cancelled_at + grace)
    assert (late_starts, late_ends) == ([], [])  # the function stopped within the grace
    assert stored(base, "slow") == written  # and nothing was written after it
    assert set(written) <= set(events(log, "end"))  # only indices that had finished
    finished = set(events(log, "end")) - set(events(log, "end", after=asked - 0.1))
    assert finished and finished <= set(written)  # and none that had finished is lost
    assert final.succeeded == len(written) and final.succeeded_indexes == str(
        IndexRanges.of(written)
    )  # the verdict counts what was kept: the store and the status agree
    assert verdict_after < 1.0, verdict_after  # the workers answered; no wait for the timeout
    assert busy_after is not None and busy_after < 2.0, busy_after

    upload(base, "next", timed(tmp_path / "next.log", 0.0), 3)
    began = time.monotonic()
    nxt = harness.submit("next", base, spec_for(base, 3))
    assert harness.wait_finished(nxt).phase is Phase.SUCCEEDED
    took = time.monotonic() - began
    assert took < 2.0, took  # not behind the cancelled task's chunks
    print(
        f"cancel -> verdict {verdict_after:.2f}s, idle {busy_after:.2f}s, kept {sorted(written)},"
        f" next task {took:.2f}s"
    )


def test_a_decisive_failure_stops_the_rest_of_its_chunk(harness: Harness, tmp_path: Path) -> None:
    """The conformance matrix's fail-fast cell: with one worker the dispatcher leases the
    whole task as one chunk; index 2 fails with no retry and no failure tolerated, so 3..5
    must not run (the pool answered 5 succeeded, 1 failed, 0 not run)."""
    base = f"file://{tmp_path}/store"
    log = tmp_path / "calls.log"
    upload(base, "t1", counted(log, fail={2}), 6)
    harness.worker("w0")
    key = harness.submit("t1", base, spec_for(base, 6, parallelism=1, items_per_pod=1))
    status = harness.wait_finished(key)
    assert status.phase is Phase.FAILED
    assert executions(log) == [0, 1, 2]  # 3..5 never called
    assert (status.succeeded, status.failed, status.not_run) == (2, 1, 3)
    assert status.succeeded_indexes == "0-1" and status.failed_indexes == "2"
    assert stored(base, "t1") == [0, 1]  # what finished before the failure is kept


def test_a_failure_with_a_retry_left_does_not_stop_its_chunk(
    harness: Harness, tmp_path: Path
) -> None:
    base = f"file://{tmp_path}/store"
    log = tmp_path / "calls.log"
    upload(base, "t1", counted(log, fail={2}), 6)
    harness.worker("w0")
    spec = spec_for(base, 6, parallelism=1, backoff_limit_per_index=1)
    key = harness.submit("t1", base, spec)
    status = harness.wait_finished(key)
    assert status.phase is Phase.FAILED
    assert executions(log) == [0, 1, 2, 2, 3, 4, 5]  # 2 retried once; 3..5 ran once
    assert (status.succeeded, status.failed, status.not_run) == (5, 1, 0)
