"""A loopback HTTP proxy in front of the API server that answers pod creates with 429.

The operator under test is pointed at http://127.0.0.1:<port> (plain HTTP on loopback, its own
ServiceAccount token passed through); every request is forwarded to the real API server over
TLS and streamed back (watches included). While ``throttle(seconds)`` is in force, each
``POST .../pods`` gets ``429 Too Many Requests`` with ``Retry-After`` instead, as an API
server under load (API Priority and Fairness) answers. Every pod create is recorded with its
time and answer, so a test counts what the operator sent rather than guessing.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

POD_CREATE = re.compile(r"^/api/v1/namespaces/[^/]+/pods/?$")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass(frozen=True)
class Create:
    sent: float  # time.monotonic() when the request arrived
    status: int


class ThrottlingProxy:
    def __init__(self, upstream: str, ca_file: str, retry_after: int = 2) -> None:
        self.upstream = upstream.rstrip("/")
        self.retry_after = retry_after
        self.creates: list[Create] = []
        self._until = 0.0
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    def throttle(self, seconds: float) -> None:
        self._until = time.monotonic() + seconds

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThrottlingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the throttling proxy did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = self._loop.run_until_complete(self._open_session())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._session.close())
        self._loop.run_until_complete(runner.cleanup())

    async def _open_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        is_create = request.method == "POST" and bool(POD_CREATE.match(request.path))
        if is_create and now < self._until:
            self.creates.append(Create(now, 429))
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": "too many requests, please try again later",
                "reason": "TooManyRequests",
                "code": 429,
            }
            return web.Response(
                status=429,
                text=json.dumps(body),
                content_type="application/json",
                headers={"Retry-After": str(self.retry_after)},
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        data = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=data or None
        ) as upstream:
            if is_create:
                self.creates.append(Create(now, upstream.status))
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
