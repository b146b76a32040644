"""What the operator's dashboard shows, from what the operator already holds: two kopf
indexes (every MapTask, with or without spec.pool, and every WorkerPool, each as a small
projection of its body) and the dispatcher's workers and leases. No API call per page.

A task's records (timings/, errors/) are read from its store by kubemap.pages.server with
the operator's own S3 settings: the endpoint and region of the chart (s3.endpoint,
s3.region) and the keys of the S3 Secret of the release namespace (the chart passes them
with dashboard.storeCredentials).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubemap.pages.views import PoolRow, PoolView, TaskRow, WorkerRow
from kubemap.stores import Store, open_store
from kubemap.stores.s3 import S3Store

from kubemap_operator.pools.dispatch import Dispatcher
from kubemap_operator.settings import Settings

Key = tuple[str, str]


def task_projection(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the dashboard keeps of a MapTask (its index holds this, not the whole body)."""
    meta, spec, status = (
        body.get("metadata") or {},
        body.get("spec") or {},
        body.get("status") or {},
    )
    return {
        "namespace": meta.get("namespace") or "",
        "name": meta.get("name") or "",
        "created": meta.get("creationTimestamp") or "",
        "pool": spec.get("pool") or "",
        "store": (spec.get("store") or {}).get("url") or "",
        "count": spec.get("count") or 0,
        "status": {
            k: status.get(k)
            for k in ("phase", "total", "succeeded", "failed", "active", "message")
            if k in status
        },
    }


def pool_projection(body: Mapping[str, Any]) -> dict[str, Any]:
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    return {
        "namespace": meta.get("namespace") or "",
        "name": meta.get("name") or "",
        "status": {
            k: status.get(k)
            for k in ("replicas", "ready", "busy", "idle", "tasksServed", "message")
            if k in status
        },
    }


def _latest(seen: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    found = list(seen)
    return max(found, key=lambda b: str(b.get("created"))) if found else None


def task_row(p: Mapping[str, Any]) -> TaskRow:
    s = p.get("status") or {}
    return TaskRow(
        namespace=str(p["namespace"]),
        name=str(p["name"]),
        phase=str(s.get("phase") or "Pending"),
        total=int(s.get("total") or p.get("count") or 0),
        succeeded=int(s.get("succeeded") or 0),
        failed=int(s.get("failed") or 0),
        active=int(s.get("active") or 0),
        pool=str(p.get("pool") or ""),
        message=str(s.get("message") or ""),
        created=str(p.get("created") or ""),
    )


def pool_row(p: Mapping[str, Any]) -> PoolRow:
    s = p.get("status") or {}
    return PoolRow(
        namespace=str(p["namespace"]),
        name=str(p["name"]),
        replicas=int(s.get("replicas") or 0),
        ready=int(s.get("ready") or 0),
        busy=int(s.get("busy") or 0),
        idle=int(s.get("idle") or 0),
        tasks_served=int(s.get("tasksServed") or 0),
        message=str(s.get("message") or ""),
    )


class ClusterSource:
    def __init__(
        self,
        tasks: Mapping[Key, Iterable[dict[str, Any]]],
        pools: Mapping[Key, Iterable[dict[str, Any]]],
        settings: Settings,
        dispatcher: Dispatcher | None,
    ) -> None:
        """tasks, pools: the dashboard's kopf indexes (projections by (namespace, name))."""
        self._tasks = tasks
        self._pools = pools
        self.settings = settings
        self.dispatcher = dispatcher

    @property
    def where(self) -> str:
        return "cluster"

    def _task(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _latest(self._tasks.get((namespace, name), ()))

    async def tasks(self) -> list[TaskRow]:
        rows = [
            task_row(p) for key in list(self._tasks) if (p := _latest(self._tasks.get(key, ())))
        ]
        return sorted(rows, key=lambda r: r.created, reverse=True)

    async def task(self, namespace: str, name: str) -> TaskRow | None:
        found = self._task(namespace, name)
        return task_row(found) if found else None

    async def task_store(self, namespace: str, name: str) -> Store | None:
        found = self._task(namespace, name)
        url = (found or {}).get("store") or self.settings.default_store
        if not found or not url:
            return None
        store = open_store(url)
        if isinstance(store, S3Store) and (self.settings.s3_endpoint or self.settings.s3_region):
            store = S3Store(
                store.bucket,
                store.prefix,
                endpoint=self.settings.s3_endpoint or None,
                region=self.settings.s3_region or None,
            )
        return store.child(name)

    async def pools(self) -> list[PoolRow]:
        rows = [
            pool_row(p) for key in list(self._pools) if (p := _latest(self._pools.get(key, ())))
        ]
        return sorted(rows, key=lambda r: (r.namespace, r.name))

    async def pool(self, namespace: str, name: str) -> PoolView | None:
        found = _latest(self._pools.get((namespace, name), ()))
        if found is None:
            return None
        workers: list[WorkerRow] = []
        if self.dispatcher is not None:
            key = (namespace, name)
            leases: dict[str, list[str]] = {}
            for task in self.dispatcher.pool_tasks(key):
                for lease in task.leases.values():
                    leases.setdefault(lease.worker, []).append(task.key[1])
            for w in sorted(self.dispatcher.live_workers(key), key=lambda w: w.name):
                mine = leases.get(w.name, [])
                workers.append(
                    WorkerRow(
                        name=w.name,
                        state="busy" if w.busy or mine else "idle",
                        leases=len(mine),
                        tasks=", ".join(sorted(set(mine))),
                    )
                )
        served = [
            task_row(p)
            for key in list(self._tasks)
            if (p := _latest(self._tasks.get(key, ())))
            and p.get("pool") == name
            and p.get("namespace") == namespace
        ]
        return PoolView(pool_row(found), tuple(workers), tuple(r for r in served if not r.finished))

    def rerun_command(self, row: TaskRow) -> str:
        return f"kubemap retry {row.name} -n {row.namespace}"
