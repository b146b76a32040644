"""`kubemap dashboard`'s relay (kubemap.backends.kubernetes.portforward.Forwarder): a local
listening socket on 127.0.0.1 whose connections each get their own stream to the pod. The
pods/portforward stream itself needs a node that streams (tests/e2e/test_dashboard_cluster.py
runs it there); here each stream is a plain TCP connection to a real dashboard, which proves
the relay: pages and JSON arrive whole, one stream per browser connection."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubemap.backends.kubernetes.portforward import Forwarder, OperatorPod
from kubemap.cli.dashboard import LocalSource
from kubemap.pages.server import DashboardApp
from kubemap.stores import open_store


class TcpStream:
    """What kubernetes.stream.portforward returns, as far as the relay uses it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))

    def socket(self, port: int) -> socket.socket:
        return self.sock

    def close(self) -> None:
        self.sock.close()


class LocalForwarder(Forwarder):
    def open_stream(self) -> Any:
        self.connections += 1
        return TcpStream(self.pod.dashboard_port)


@pytest.fixture()
def dashboard(tmp_path: Path) -> Iterator[int]:
    loop = asyncio.new_event_loop()
    app = DashboardApp(LocalSource(open_store(str(tmp_path))))
    port = loop.run_until_complete(app.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port
    asyncio.run_coroutine_threadsafe(app.stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def test_the_relay_carries_each_connection_on_its_own_stream(dashboard: int) -> None:
    forwarder = LocalForwarder(None, OperatorPod("kubemap-system", "op", dashboard))  # type: ignore[arg-type]
    local = forwarder.listen(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as answer:
            page = answer.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/healthz", timeout=10) as answer:
            health = json.load(answer)
    finally:
        forwarder.close()
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
    assert health == {"ok": True}
    assert forwarder.connections == 2
