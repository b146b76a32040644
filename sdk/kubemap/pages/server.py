"""The dashboard's HTTP face: a small read-only aiohttp app over a `Source`.

    GET /                               tasks and pools          GET /api/overview
    GET /tasks/<ns>/<name>              one task                 GET /api/tasks/<ns>/<name>?have=V
    GET /tasks/<ns>/<name>/timeline     `kubemap timeline`'s page of that task
    GET /pools/<ns>/<name>              one pool                 GET /api/pools/<ns>/<name>
(<ns> is "-" for a task of this machine.) The operator serves it on 127.0.0.1 only, so the
only way in is `kubectl port-forward` (`kubemap dashboard`): the RBAC on pods/portforward
decides who sees it. Requests whose Host is not a loopback name are refused, so a web page
cannot reach it by rebinding its own DNS name to 127.0.0.1.

What a task's store holds is read here, in a thread, and kept per task (RecordsCache): timing
records are write-once, so each refresh reads only the records that are new since the last
(one LIST, GETs of the new keys), and a finished task's section is computed once it has
settled (a second read after the finish found nothing new).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kubemap.contract import ERRORS_PREFIX, parse_error_key
from kubemap.errors import KubemapError
from kubemap.pages import html
from kubemap.pages.digest import digest
from kubemap.pages.timeline import render_html
from kubemap.pages.views import Failure, Source, TaskRow
from kubemap.stores import KeyNotFound, Store
from kubemap.task.timings import READ_THREADS, SliceTiming, timing_keys

log = logging.getLogger("kubemap.dashboard")
REFRESH_SECONDS = 3.0  # a running task's records are read again at most this often
# A finished task's records are read until this long after its finish has been seen: a slow
# store listing, or a record written just as the status turned, still makes it into the page.
SETTLE_SECONDS = 20.0
CACHED_TASKS = 64  # tasks whose records are kept (least recently shown go first)
FAILURES_SHOWN = 20  # error records read for the page (the count says how many exist)
SHUTDOWN_SECONDS = 2.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


@dataclass
class Records:
    """What the task page shows from the store, as last read."""

    timings: dict[str, SliceTiming] = field(default_factory=dict)
    section: str = ""
    version: str = ""
    finished: bool = False  # read after the task had finished
    final: bool = False  # settled: read SETTLE_SECONDS after the finish, nothing new
    read_at: float = 0.0
    finished_at: float = 0.0  # when a read first saw the task finished (monotonic)


def read_failures(task: Store, limit: int = FAILURES_SHOWN) -> tuple[list[Failure], int]:
    """The first `limit` error records (lowest indices) and how many there are."""
    indices = []
    for key in task.list(ERRORS_PREFIX):
        try:
            indices.append((parse_error_key(key), key))
        except ValueError:
            continue
    indices.sort()
    found = []
    for index, key in indices[:limit]:
        try:
            record = json.loads(task.get(key))
        except (KeyNotFound, ValueError):
            continue
        found.append(
            Failure(
                index=index,
                type=str(record.get("type", "Error")),
                message=str(record.get("message", "")),
                traceback=str(record.get("traceback", "")),
                attempts=int(record.get("attempts") or 0),
            )
        )
    return found, len(indices)


def refresh(
    task: Store, before: Records, finished: bool, settle_seconds: float = SETTLE_SECONDS
) -> Records:
    """The records after reading what is new in the store (blocking: run it in a thread)."""
    timings = dict(before.timings)
    fresh = [key for key in timing_keys(task) if key not in timings]

    def fetch(key: str) -> tuple[str, SliceTiming | None]:
        try:
            return key, SliceTiming.decode(task.get(key))
        except KeyNotFound:
            return key, None

    if len(fresh) > 1:
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(fresh))) as pool:
            got = list(pool.map(fetch, fresh))
    else:
        got = [fetch(key) for key in fresh]
    timings.update((key, t) for key, t in got if t is not None)
    ordered = sorted(timings.values(), key=lambda t: (t.start, t.first))
    failures, failed = read_failures(task)
    section = html.records_section(digest(ordered), failures, failed, "")
    # A worker may write its record just after the status says the task finished: the
    # records are final once a read well after the finish found nothing new.
    now = time.monotonic()
    finished_at = (before.finished_at or now) if finished else 0.0
    final = finished and not fresh and now - finished_at >= settle_seconds
    version = f"{len(timings)}.{failed}"
    return Records(timings, section, version, finished, final, now, finished_at)


class RecordsCache:
    def __init__(
        self,
        size: int = CACHED_TASKS,
        refresh_seconds: float = REFRESH_SECONDS,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self.size = size
        self.refresh_seconds = refresh_seconds
        self.settle_seconds = settle_seconds
        self._entries: OrderedDict[tuple[str, str], Records] = OrderedDict()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.reads = 0  # store refreshes done (what tests count)

    async def get(self, key: tuple[str, str], task: Store, finished: bool) -> Records:
        entry = self._fresh(key, finished)
        if entry is not None:
            return entry
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self._fresh(key, finished)
            if entry is not None:
                return entry
            before = self._entries.get(key) or Records()
            self.reads += 1
            try:
                entry = await asyncio.to_thread(
                    refresh, task, before, finished, self.settle_seconds
                )
            except KubemapError as exc:
                note = f"the task's records could not be read from {task.url}: {exc}"
                entry = Records(
                    before.timings,
                    html.records_section(None, (), 0, note),
                    f"error.{time.monotonic():.0f}",
                    read_at=time.monotonic(),
                )
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                old, _ = self._entries.popitem(last=False)
                self._locks.pop(old, None)
            return entry

    def _fresh(self, key: tuple[str, str], finished: bool) -> Records | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.final and finished:
            self._entries.move_to_end(key)
            return entry
        if time.monotonic() - entry.read_at < self.refresh_seconds:
            return entry
        return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    if host not in LOOPBACK_HOSTS:
        return web.Response(status=421, text="the dashboard answers only to 127.0.0.1 / localhost")
    return await handler(request)


class DashboardApp:
    def __init__(self, source: Source, *, cache: RecordsCache | None = None) -> None:
        self.source = source
        self.cache = cache or RecordsCache()
        self.app = web.Application(middlewares=[loopback_only])
        self.app.add_routes(
            [
                web.get("/", self.index),
                web.get("/api/overview", self.overview),
                web.get("/tasks/{ns}/{name}", self.task),
                web.get("/api/tasks/{ns}/{name}", self.task_json),
                web.get("/tasks/{ns}/{name}/timeline", self.timeline),
                web.get("/pools/{ns}/{name}", self.pool),
                web.get("/api/pools/{ns}/{name}", self.pool_json),
                web.get("/healthz", self.healthz),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: a free port); returns the port."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1]) if self._runner.addresses else port
        log.info(f"dashboard listening on {host}:{self.port}")
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _key(request: web.Request) -> tuple[str, str]:
        ns = request.match_info["ns"]
        return ("" if ns == "-" else ns), request.match_info["name"]

    async def _task(self, request: web.Request) -> tuple[TaskRow, Records | None]:
        ns, name = self._key(request)
        row = await self.source.task(ns, name)
        if row is None:
            raise web.HTTPNotFound(text=f"no task {name} in namespace {ns or '-'}")
        store = await self.source.task_store(ns, name)
        if store is None:
            return row, None
        return row, await self.cache.get((ns, name), store, row.finished)

    @staticmethod
    def _section(records: Records | None) -> str:
        if records is None:
            return html.records_section(
                None,
                (),
                0,
                "This task keeps no records in a store (container mode without "
                "a store): only its counts are shown.",
            )
        return records.section

    # -- routes -------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        page = html.index_page(
            self.source.where, await self.source.tasks(), await self.source.pools()
        )
        return web.Response(text=page, content_type="text/html")

    async def overview(self, request: web.Request) -> web.StreamResponse:
        tasks, pools = await self.source.tasks(), await self.source.pools()
        body: dict[str, Any] = html.index_rows(tasks, pools)
        body["rows"] = [t.to_json() for t in tasks]
        return web.json_response(body)

    async def task(self, request: web.Request) -> web.StreamResponse:
        row, records = await self._task(request)
        page = html.task_page(
            self.source.where,
            row,
            self._section(records),
            records.version if records else "none",
            self.source.rerun_command(row),
        )
        return web.Response(text=page, content_type="text/html")

    async def task_json(self, request: web.Request) -> web.StreamResponse:
        row, records = await self._task(request)
        version = records.version if records else "none"
        body: dict[str, Any] = {
            "task": row.to_json(),
            "version": version,
            "final": records is None or records.final,
        }
        if request.query.get("have") != version:
            body["records"] = self._section(records)
        return web.json_response(body)

    async def timeline(self, request: web.Request) -> web.StreamResponse:
        row, records = await self._task(request)
        if records is None or not records.timings:
            raise web.HTTPNotFound(text=f"task {row.name} has no timing records")
        ordered = sorted(records.timings.values(), key=lambda t: (t.start, t.first))
        page = await asyncio.to_thread(render_html, row.name, ordered)
        return web.Response(text=page, content_type="text/html")

    async def pool(self, request: web.Request) -> web.StreamResponse:
        ns, name = self._key(request)
        view = await self.source.pool(ns, name)
        if view is None:
            raise web.HTTPNotFound(text=f"no worker pool {name} in namespace {ns}")
        return web.Response(text=html.pool_page(self.source.where, view), content_type="text/html")

    async def pool_json(self, request: web.Request) -> web.StreamResponse:
        ns, name = self._key(request)
        view = await self.source.pool(ns, name)
        if view is None:
            raise web.HTTPNotFound(text=f"no worker pool {name} in namespace {ns}")
        return web.json_response({"pool": view.row.to_json(), "html": html.pool_section(view)})

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})
