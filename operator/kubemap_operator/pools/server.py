"""The dispatcher's HTTP face: a small aiohttp app inside the operator process.

    POST /v1/lease      {"python": "3.11", "report": {...}?}     -> 200 lease | 204 no work
    POST /v1/heartbeat  {"leases": [id, ...], "wait": s?}        -> 200 {"lost": [...]}
    POST /v1/report     {"lease": id, "kind": ok|user|infra|usage,
                         "succeeded": "0-9", "failed": "", "why"} -> 200 | 410 lease gone
Every request carries `X-Kubemap-Pool: <namespace>/<pool>`, `X-Kubemap-Worker: <pod>` and
`Authorization: Bearer <pool token>`; anything else gets 401 before it touches any state.
JSON bodies are small and bounded (client_max_size), and a lease request long-polls so an
idle worker costs one sleeping connection, not a spinning loop. A heartbeat with "wait"
long-polls too: it answers at once when a lease is taken back (the task was cancelled), so
the worker stops that task's function within a round trip.

On stop (operator shutdown, e.g. a helm upgrade: the Deployment's Recreate strategy starts the
new operator only once this one is gone) every long poll answers at once, a lease request
with 204 and a heartbeat with its usual answer, and the workers ask the next operator: the
stop never waits out a long poll.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict
from typing import Any

from aiohttp import web
from kubemap.core.policy import Cause
from kubemap.core.ranges import IndexRanges, RangesSyntaxError

from kubemap_operator.pools.dispatch import Dispatcher, PoolKey
from kubemap_operator.pools.tokens import token_ok
from kubemap_operator.tasks.observe import WorkerReport

LONG_POLL_SECONDS = 20.0
# A backstop for stop(): the long polls are woken and answer at once, so this only bounds a
# request stuck elsewhere (a slow client body); aiohttp then cancels its handler.
SHUTDOWN_SECONDS = 2.0
MAX_BODY = 64 * 1024
log = logging.getLogger("kubemap.dispatcher")


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class DispatcherApp:
    def __init__(self, dispatcher: Dispatcher, key: bytes) -> None:
        self.dispatcher = dispatcher
        self.key = key
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes(
            [
                web.post("/v1/lease", self.lease),
                web.post("/v1/heartbeat", self.heartbeat),
                web.post("/v1/report", self.report),
                web.get("/healthz", self.healthz),
            ]
        )
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info(f"dispatcher listening on {host}:{port}")

    async def stop(self) -> None:
        # Wake the waiting requests first: cleanup() stops listening, then waits (up to
        # SHUTDOWN_SECONDS) for open requests, and a long poll would hold it for 20 s.
        self.dispatcher.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _caller(self, request: web.Request) -> tuple[PoolKey, str] | web.Response:
        pool_text = request.headers.get("X-Kubemap-Pool", "")
        worker = request.headers.get("X-Kubemap-Worker", "")[:253]
        auth = request.headers.get("Authorization", "")
        namespace, _, pool = pool_text.partition("/")
        uid = self.dispatcher.pool_uid((namespace, pool)) if namespace and pool else None
        token = auth.removeprefix("Bearer ").strip()
        if uid is None or not worker or not token_ok(self.key, namespace, pool, uid, token):
            # Never log the presented token: only who asked for what.
            log.warning(
                f"refused {request.path} for pool {pool_text or '<none>'} from "
                f"{request.remote} (worker {worker or '<none>'}): missing or wrong pool token"
            )
            return _refuse(
                401, "missing or wrong pool credential: only the pool's own pods may lease"
            )
        return (namespace, pool), worker

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _refuse(400, "the body must be a JSON object")
        if not isinstance(data, dict):
            return _refuse(400, "the body must be a JSON object")
        return data

    async def lease(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        pool, worker = caller
        previous = body.get("report")
        if isinstance(previous, dict):
            answer = self._record(pool, previous)
            if answer.status == 400:
                return answer
        throttles = body.get("throttles")
        if isinstance(throttles, int) and isinstance(previous, dict):
            self.dispatcher.store_throttles(pool, throttles)
        python = str(body.get("python", ""))[:16]
        wait = min(LONG_POLL_SECONDS, max(0.0, float(body.get("wait", LONG_POLL_SECONDS))))
        grant = await self.dispatcher.lease(pool, worker, python, wait)
        if grant is None:
            return web.Response(status=204)
        return web.json_response(asdict(grant))

    async def heartbeat(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        pool, worker = caller
        ids = [str(i) for i in body.get("leases") or []][:64]
        self.dispatcher.seen(pool, worker, str(body.get("python", ""))[:16])
        try:
            wait = min(LONG_POLL_SECONDS, max(0.0, float(body.get("wait") or 0)))
        except (TypeError, ValueError):
            return _refuse(400, "wait must be a number of seconds")
        return web.json_response({"lost": await self.dispatcher.watch(pool, worker, ids, wait)})

    async def report(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        return self._record(caller[0], body)

    def _record(self, pool: PoolKey, body: dict[str, Any]) -> web.Response:
        kind = str(body.get("kind", "infra"))
        if kind not in ("ok", "user", "infra", "usage"):
            return _refuse(400, f"kind must be ok, user, infra or usage, not {kind!r}")
        report: WorkerReport | None = None
        if kind == "usage":  # the worker's own words become the task's failure message
            report = WorkerReport(error=str(body.get("why", ""))[:300] or None)
        elif "succeeded" in body or "failed" in body:
            try:
                report = WorkerReport(
                    IndexRanges.parse(body.get("succeeded")), IndexRanges.parse(body.get("failed"))
                )
            except (RangesSyntaxError, TypeError) as exc:
                return _refuse(400, f"bad index ranges: {exc}")
        listed = body.get("timings")
        timings = tuple(
            json.dumps(t)
            for t in (listed if isinstance(listed, list) else [])[:8]
            if isinstance(t, dict)
        )
        if report is not None and timings:  # for the status summary and the metrics
            report = dataclasses.replace(report, timings=timings)
        raw = body.get("cause")
        if isinstance(raw, dict) and kind == "infra":  # e.g. "tampered": the plan stops the task
            cause = Cause(str(raw.get("kind") or "store"), str(raw.get("code") or ""),
                          str(raw.get("message") or "")[:300])  # fmt: skip
            report = WorkerReport(cause=cause)
        known = self.dispatcher.report(
            pool, str(body.get("lease", "")), kind, report, str(body.get("why", ""))[:500]
        )
        if not known:
            return _refuse(410, "this lease is gone (task finished, or lease expired and re-run)")
        return web.json_response({})

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})
