"""A loopback HTTP front for an S3 server (SeaweedFS) that answers `503 SlowDown` to a share of
requests while `throttle(seconds, share)` is in force, as S3 does under load.

Clients are pointed at http://127.0.0.1:<port> (path-style, the same credentials: the
signature covers the Host header, which is forwarded unchanged, so SeaweedFS checks it as the
client signed it). Every request is counted per second of arrival with its answer, so a test
asserts on what the clients sent (the request rate before, during and after the throttle),
not on timings. Which requests are refused is deterministic: within the window, request n
is refused when floor(n * share) grows, so exactly `share` of them are.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
SLOW_DOWN = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    "<Message>Please reduce your request rate.</Message><RequestId>kubemap-test</RequestId>"
    "</Error>"
)


@dataclass(frozen=True)
class Sent:
    second: int  # whole seconds since the proxy started
    refused: bool


class S3ThrottleProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[Sent] = []
        self.window: tuple[int, int] | None = None  # seconds since start, [from, to)
        self._share = 0.0
        self._until = 0.0
        self._in_window = 0
        self._started = time.monotonic()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def second(self) -> int:
        return int(time.monotonic() - self._started)

    def throttle(self, seconds: float, share: float = 0.3) -> None:
        now = time.monotonic()
        self._share, self._until, self._in_window = share, now + seconds, 0
        first = int(now - self._started)
        self.window = (first, first + math.ceil(seconds))

    def per_second(self) -> Counter[int]:
        """Requests that arrived in each second since the start, refused or not."""
        return Counter(sent.second for sent in list(self.requests))

    def refused(self) -> int:
        return sum(1 for sent in list(self.requests) if sent.refused)

    def __enter__(self) -> S3ThrottleProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the S3 throttling proxy did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=1 << 30)
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
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
        )

    def _refuse(self, now: float) -> bool:
        if now >= self._until:
            return False
        self._in_window += 1
        n = self._in_window
        return math.floor(n * self._share) > math.floor((n - 1) * self._share)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        refused = self._refuse(now)
        self.requests.append(Sent(int(now - self._started), refused))
        if refused:
            await request.read()
            return web.Response(status=503, text=SLOW_DOWN, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        data = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.raw_path,
            headers=headers,
            data=data if data else None,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            if request.method != "HEAD":
                body = await upstream.read()
                response.content_length = len(body)
                await response.prepare(request)
                await response.write(body)
            else:
                if "Content-Length" in upstream.headers:
                    response.headers["Content-Length"] = upstream.headers["Content-Length"]
                await response.prepare(request)
            await response.write_eof()
            return response
