"""Stopping the dispatcher (operator shutdown: helm upgrade or rollback, Recreate strategy)
while pool workers long-poll it: every waiting request is answered at once, so the old
operator stops in well under a long poll and the new one can start.

The real DispatcherApp on loopback; the requests go through the pool worker's own client
(kubemap.runtime.poolworker.DispatcherClient), as a worker pod sends them.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubemap.core.status import Phase
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Mode, StoreRef
from kubemap.resources.workerpool import python_minor
from kubemap.runtime.poolworker import DispatcherClient, PoolEnv, serve
from kubemap.stores import open_store
from kubemap.task.data import iter_results, write_function, write_inputs
from kubemap.task.meta import TaskMeta, write_meta
from kubemap_operator.pools.dispatch import Dispatcher
from kubemap_operator.pools.server import LONG_POLL_SECONDS, DispatcherApp
from kubemap_operator.pools.tokens import pool_token
from kubemap_operator.tasks.planner import Limits

KEY = b"test-key"
POOL = ("ns", "p")
WAITING_LEASES = 4
# Far from both sides: the old stop waited out the 20 s long polls; the new one answers them
# within a round trip (the bound only leaves room for a loaded 2-core test machine).
STOP_BOUND_SECONDS = 5.0


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    dispatcher: Dispatcher
    app: DispatcherApp
    loop: asyncio.AbstractEventLoop
    url: str

    def call(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)


def _serve(loop: asyncio.AbstractEventLoop, port: int, lease_seconds: float) -> Served:
    """A dispatcher as an operator starts it: fresh state, the pool known (its uid)."""

    async def start() -> tuple[Dispatcher, DispatcherApp]:
        dispatcher = Dispatcher(
            lease_seconds=lease_seconds, limits=Limits(backoff_base_seconds=0.01)
        )
        dispatcher.pool(POOL).uid = "pool-uid"
        app = DispatcherApp(dispatcher, KEY)
        await app.start("127.0.0.1", port)
        return dispatcher, app

    dispatcher, app = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    return Served(dispatcher, app, loop, f"http://127.0.0.1:{port}")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture
def served(loop: asyncio.AbstractEventLoop) -> Iterator[Served]:
    # Leases outlive the test: the heartbeat below waits on a lease that stays held.
    served = _serve(loop, _port(), lease_seconds=60.0)
    yield served
    asyncio.run_coroutine_threadsafe(served.app.stop(), loop).result(30)  # no-op once stopped


def _client(url: str, worker: str) -> DispatcherClient:
    return DispatcherClient(PoolEnv(url, "ns/p", pool_token(KEY, "ns", "p", "pool-uid"), worker))


def test_stop_answers_every_waiting_lease_and_heartbeat_at_once(served: Served) -> None:
    # One task, one lease at a time: the holder's lease stays held, everyone else waits.
    spec = MapTaskSpec(
        mode=Mode.FUNCTION, count=100, store=StoreRef(url="file:///unused"), pool="p", parallelism=1
    )
    served.call(
        lambda: served.dispatcher.sync(
            ("ns", "t"), "uid-t", spec, MapTaskStatus(), "file:///unused/t", python_minor(), 1
        )
    )
    holder = _client(served.url, "holder")
    status, grant = holder.post("/v1/lease", {"python": python_minor(), "wait": 0}, 10)
    assert status == 200 and grant["lease_id"], (status, grant)
    lease_id = str(grant["lease_id"])

    answers: dict[str, tuple[int, Any]] = {}
    lock = threading.Lock()

    def ask(name: str, path: str, body: dict[str, Any]) -> None:
        # The worker's own read timeout for a long poll: the wait plus 20 s.
        answer = _client(served.url, name).post(path, body, LONG_POLL_SECONDS + 20)
        with lock:
            answers[name] = answer

    threads = [
        threading.Thread(
            target=ask,
            args=(f"idle{i}", "/v1/lease", {"python": python_minor(), "wait": LONG_POLL_SECONDS}),
        )
        for i in range(WAITING_LEASES)
    ]
    beat = {"leases": [lease_id], "python": python_minor(), "wait": LONG_POLL_SECONDS}
    threads.append(threading.Thread(target=ask, args=("holder", "/v1/heartbeat", beat)))
    for thread in threads:
        thread.start()

    # Every request has reached the dispatcher and is long-polling (none answered yet).
    deadline = time.monotonic() + 10
    while len(served.call(lambda: served.dispatcher.live_workers(POOL))) < WAITING_LEASES + 1:
        assert time.monotonic() < deadline, "the waiting workers did not reach the dispatcher"
        time.sleep(0.05)
    time.sleep(0.5)
    assert answers == {}, f"answered before the stop: {answers}"

    began = time.monotonic()
    asyncio.run_coroutine_threadsafe(served.app.stop(), served.loop).result(60)
    took = time.monotonic() - began
    for thread in threads:
        thread.join(LONG_POLL_SECONDS + 25)

    leases = [answers.get(f"idle{i}") for i in range(WAITING_LEASES)]
    print(f"stop took {took:.2f}s; lease answers {leases}; heartbeat {answers.get('holder')}")
    # Each waiting lease request got "no work, ask again" (never an error, never a lease).
    assert [answer[0] if answer else None for answer in leases] == [204] * WAITING_LEASES
    # The heartbeat got its normal answer: the lease is still held (its function runs on).
    assert answers.get("holder") == (200, {"lost": []})
    assert took < STOP_BOUND_SECONDS, f"stop took {took:.1f}s while workers long-polled"


def slow_logged(log: Path) -> Callable[[int], int]:
    def fn(x: int) -> int:
        time.sleep(0.1)
        with open(log, "a") as out:
            out.write(f"{x}\n")
        return 3 * x

    return fn


def test_a_worker_mid_lease_carries_on_with_the_next_operator_and_loses_nothing(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator is replaced while a real pool worker runs a slice: the worker's waiting
    heartbeat is answered as usual (its function is not stopped), it finds the next operator
    on the same address, and every index runs exactly once (a re-lease skips the results the
    old lease wrote)."""
    n, base, log = 30, f"file://{tmp_path}/store", tmp_path / "calls.log"
    task = open_store(base).child("t")
    write_function(task, slow_logged(log))
    write_inputs(task, range(n))
    write_meta(task, TaskMeta.new(n, "fn"))
    spec = MapTaskSpec(mode=Mode.FUNCTION, count=n, store=StoreRef(url=base), pool="p")
    port = _port()
    # A heartbeat every 10 s that long-polls 10 s: the stop below finds it waiting.
    old = _serve(loop, port, lease_seconds=30.0)
    flushed = old.call(
        lambda: old.dispatcher.sync(
            ("ns", "t"), "uid-t", spec, MapTaskStatus(), f"{base}/t", python_minor(), 1
        )
    )[0]
    assert flushed is not None and flushed.start_time  # what the API holds for the next one

    stop = threading.Event()
    env = PoolEnv(old.url, "ns/p", pool_token(KEY, "ns", "p", "pool-uid"), "w0")
    worker = threading.Thread(
        target=serve, args=(env,), kwargs={"stop": stop.is_set, "wait": LONG_POLL_SECONDS}
    )
    worker.start()
    deadline = time.monotonic() + 30
    while not log.exists() or len(log.read_text().split()) < 3:  # mid-slice
        assert time.monotonic() < deadline, "the worker did not start the slice"
        time.sleep(0.05)
    began = time.monotonic()
    asyncio.run_coroutine_threadsafe(old.app.stop(), loop).result(60)
    took = time.monotonic() - began

    new = _serve(loop, port, lease_seconds=30.0)  # the next operator, same Service address
    try:
        new.call(
            lambda: new.dispatcher.sync(
                ("ns", "t"), "uid-t", spec, flushed, f"{base}/t", python_minor(), 1
            )
        )
        deadline = time.monotonic() + 60
        while not new.call(lambda: new.dispatcher.tasks[("ns", "t")].status.phase.finished):
            assert time.monotonic() < deadline, "the task did not finish under the new operator"
            assert worker.is_alive(), "the worker exited"
            time.sleep(0.1)
        status = new.call(lambda: new.dispatcher.tasks[("ns", "t")].status)
    finally:
        stop.set()  # seen between two polls: stopping the operator answers the waiting one
        asyncio.run_coroutine_threadsafe(new.app.stop(), loop).result(30)
        worker.join(30)
    said = capsys.readouterr().err
    calls = sorted(int(x) for x in log.read_text().split())
    print(f"stop took {took:.2f}s; status {status.phase} {status.succeeded_indexes}; "
          f"{len(calls)} calls; worker said:\n{said}")  # fmt: skip
    assert took < STOP_BOUND_SECONDS, f"stop took {took:.1f}s while the worker's heartbeat waited"
    assert status.phase is Phase.SUCCEEDED and status.succeeded_indexes == f"0-{n - 1}"
    assert calls == list(range(n))  # every index exactly once: nothing lost, nothing doubled
    assert dict(iter_results(task)) == {i: 3 * i for i in range(n)}
    assert "taken back" not in said  # the function was never stopped
    assert "refused" not in said and not worker.is_alive()
