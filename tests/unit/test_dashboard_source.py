"""The operator's dashboard source: rows from its kopf indexes' projections (no API call),
a pool's workers from the dispatcher, the task's store from its spec or the chart's."""

from __future__ import annotations

import asyncio
import socket

from kubemap.pages.server import DashboardApp
from kubemap.stores.s3 import S3Store
from kubemap_operator.dashboard.handlers import serve
from kubemap_operator.dashboard.source import ClusterSource, pool_projection, task_projection
from kubemap_operator.settings import Settings


def task_body(name: str, pool: str = "", phase: str = "Running") -> dict:
    return {
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"count": 10, "pool": pool} if pool else {"count": 10},
        "status": {"phase": phase, "total": 10, "succeeded": 4, "failed": 1, "active": 2,
                   "succeededIndexes": "0-3"},
    }  # fmt: skip


def test_rows_and_stores_come_from_the_projections() -> None:
    tasks = {("ns", n): [task_projection(task_body(n, p))] for n, p in (("a", ""), ("b", "warm"))}
    pools = {("ns", "warm"): [pool_projection({"metadata": {"name": "warm", "namespace": "ns"},
                                               "status": {"replicas": 2, "busy": 1, "idle": 1}})]}  # fmt: skip
    source = ClusterSource(
        tasks, pools, Settings(default_store="s3://bucket/tasks", s3_endpoint="http://s3:8333"),
        None,
    )  # fmt: skip
    rows = asyncio.run(source.tasks())
    assert {(r.name, r.pool, r.succeeded, r.failed, r.active) for r in rows} == {
        ("a", "", 4, 1, 2),
        ("b", "warm", 4, 1, 2),
    }
    assert "succeededIndexes" not in tasks[("ns", "a")][0]["status"]  # kept small
    store = asyncio.run(source.task_store("ns", "a"))
    assert isinstance(store, S3Store)
    assert store.url == "s3://bucket/tasks/a" and store.endpoint_url == "http://s3:8333"
    assert asyncio.run(source.task("ns", "missing")) is None
    view = asyncio.run(source.pool("ns", "warm"))
    assert view is not None and view.row.busy == 1 and [t.name for t in view.tasks] == ["b"]
    assert source.rerun_command(rows[0]) == f"kubemap retry {rows[0].name} -n ns"


def test_a_taken_port_leaves_the_operator_running_without_a_dashboard() -> None:
    async def attempt() -> tuple[bool, bool]:
        source = ClusterSource({}, {}, Settings(), None)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            refused = await serve(DashboardApp(source), taken.getsockname()[1])
        app = DashboardApp(source)
        served = await serve(app, 0)
        await app.stop()
        return refused, served

    assert asyncio.run(attempt()) == (False, True)
