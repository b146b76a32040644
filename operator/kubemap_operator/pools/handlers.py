"""kopf handlers of WorkerPools, and the dispatcher's start and stop with the operator."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from kubemap.contract import GROUP, VERSION
from kubemap.resources.workerpool import POOL_PLURAL

from kubemap_operator.kubeapi import KubeApi
from kubemap_operator.pools.dispatch import Dispatcher, PoolKey, TaskKey
from kubemap_operator.pools.kubecalls import PoolApi
from kubemap_operator.pools.reconcile import PoolReconciler
from kubemap_operator.pools.server import DispatcherApp
from kubemap_operator.pools.tokens import dispatcher_key
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.reconcile import Reconciler

log = logging.getLogger("kubemap.pools")
POOL_RESYNC_SECONDS = 10.0


def register(registry: kopf.OperatorRegistry, settings: Settings, holder: dict[str, Any]) -> None:
    """Add the pool handlers; holder["reconciler"] is the MapTask reconciler once started."""
    if not settings.dispatcher_port:
        return

    @kopf.on.startup(registry=registry)
    async def start_dispatcher(**_: Any) -> None:
        reconciler: Reconciler = holder["reconciler"]
        loop = asyncio.get_running_loop()

        def task_changed(key: TaskKey) -> None:
            loop.call_soon(lambda: loop.create_task(reconciler.trigger(*key, log)))

        def pool_work(key: PoolKey) -> None:
            pools = holder.get("pools")
            if pools is not None:
                loop.call_soon(lambda: loop.create_task(pools.trigger(*key)))

        dispatcher = Dispatcher(
            lease_seconds=settings.lease_seconds,
            limits=reconciler.limits,
            on_change=task_changed,
            on_pool_work=pool_work,
        )
        key = dispatcher_key()
        reconciler.dispatcher = dispatcher
        holder["pools"] = PoolReconciler(PoolApi(KubeApi()), dispatcher, settings, key)
        app = DispatcherApp(dispatcher, key)
        await app.start(settings.listen_address, settings.dispatcher_port)
        holder["dispatcher_app"] = app

    @kopf.on.cleanup(registry=registry)
    async def stop_dispatcher(**_: Any) -> None:
        app = holder.get("dispatcher_app")
        if app is not None:
            await app.stop()

    @kopf.on.event(GROUP, VERSION, POOL_PLURAL, id="workerpool-event", registry=registry)
    async def pool_event(*, type: str, name: str, namespace: str | None, **_: Any) -> None:
        pools: PoolReconciler = holder["pools"]
        if type == "DELETED":
            pools.forget(namespace or "", name)
            return
        await pools.trigger(namespace or "", name)

    @kopf.timer(
        GROUP, VERSION, POOL_PLURAL, id="workerpool-resync", interval=POOL_RESYNC_SECONDS,
        registry=registry,
    )  # fmt: skip
    async def pool_timer(*, name: str, namespace: str | None, **_: Any) -> None:
        await holder["pools"].trigger(namespace or "", name)
