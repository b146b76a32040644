"""The dashboard's kopf side: two indexes (small projections of every MapTask and every
WorkerPool) and its start and stop with the operator. It listens on 127.0.0.1 only, so it
is reached through `kubectl port-forward` / `kubemap dashboard`: the RBAC on pods/portforward
in the operator's namespace decides who sees it."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubemap.contract import GROUP, PLURAL, VERSION
from kubemap.pages.server import DashboardApp
from kubemap.resources.workerpool import POOL_PLURAL

from kubemap_operator.dashboard.source import ClusterSource, pool_projection, task_projection
from kubemap_operator.pools.dispatch import Dispatcher
from kubemap_operator.settings import Settings

HOST = "127.0.0.1"
log = logging.getLogger("kubemap.dashboard")


async def serve(app: DashboardApp, port: int) -> bool:
    """Start listening; False (logged) when the port is taken: a read-only page is no
    reason for the operator to stop reconciling."""
    try:
        await app.start(HOST, port)
    except OSError as exc:
        log.error(
            f"dashboard not served: cannot listen on {HOST}:{port} ({exc.strerror}); set the "
            "chart value dashboard.port to a free port"
        )
        await app.stop()
        return False
    return True


def register(
    registry: kopf.OperatorRegistry, settings: Settings, dispatcher: Dispatcher | None
) -> None:
    """Add the dashboard to the registry (nothing when settings.dashboard_port is 0)."""
    if not settings.dashboard_port:
        return
    holder: dict[str, DashboardApp] = {}

    @kopf.index(GROUP, VERSION, PLURAL, id="kubemap_dashboard_tasks", registry=registry)
    def dashboard_tasks(
        body: kopf.Body, name: str, namespace: str | None, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return {(namespace or "", name): task_projection(body)}

    @kopf.index(GROUP, VERSION, POOL_PLURAL, id="kubemap_dashboard_pools", registry=registry)
    def dashboard_pools(
        body: kopf.Body, name: str, namespace: str | None, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return {(namespace or "", name): pool_projection(body)}

    @kopf.on.startup(registry=registry)
    async def start_dashboard(**kwargs: Any) -> None:
        source = ClusterSource(
            kwargs["kubemap_dashboard_tasks"], kwargs["kubemap_dashboard_pools"], settings,
            dispatcher,
        )  # fmt: skip
        app = DashboardApp(source)
        if await serve(app, settings.dashboard_port):
            holder["app"] = app

    @kopf.on.cleanup(registry=registry)
    async def stop_dashboard(**_: Any) -> None:
        app = holder.pop("app", None)
        if app is not None:
            await app.stop()
