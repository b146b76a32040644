"""Stopping the dispatcher (operator shutdown: helm upgrade or rollback, Recreate strategy)
while pool workers long-poll it: every waiting request is answered at once, so the old
operator stops in well under a long poll and the new one can start.

The real DispatcherApp on loopback; the requests go through the pool worker's own client
(kubemap.poolworker.DispatcherClient), as a worker pod sends them.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubemap.models import MapTaskSpec, MapTaskStatus, Mode, StoreRef
from kubemap.poolmodels import python_minor
from kubemap.poolworker import DispatcherClient, PoolEnv
from kubemap_operator.planner import Limits
from kubemap_operator.pools.dispatch import Dispatcher
from kubemap_operator.pools.server import LONG_POLL_SECONDS, DispatcherApp
from kubemap_operator.pools.tokens import pool_token

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


@pytest.fixture
def served() -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = _port()

    async def start() -> tuple[Dispatcher, DispatcherApp]:
        # Leases outlive the test: the heartbeat below waits on a lease that stays held.
        dispatcher = Dispatcher(lease_seconds=60.0, limits=Limits(backoff_base_seconds=0.01))
        dispatcher.pool(POOL).uid = "pool-uid"
        app = DispatcherApp(dispatcher, KEY)
        await app.start("127.0.0.1", port)
        return dispatcher, app

    dispatcher, app = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield Served(dispatcher, app, loop, f"http://127.0.0.1:{port}")
    asyncio.run_coroutine_threadsafe(app.stop(), loop).result(30)  # a no-op once stopped
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


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
