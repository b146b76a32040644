"""kopf handlers of the pool side: MapTasks with spec.pool (the pool-task controller),
WorkerPools (the pool controller), and the dispatcher's start and stop with the operator.

The MapTask (pod) controller's handlers take only tasks without spec.pool, these only tasks
with it: each task has exactly one controller, chosen by its spec.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import kopf
from kubemap.contract import GROUP, PLURAL, VERSION
from kubemap.core.status import Phase
from kubemap.resources.workerpool import POOL_PLURAL

from kubemap_operator import metrics
from kubemap_operator.kubeapi import KubeApi
from kubemap_operator.pools.dispatch import Dispatcher
from kubemap_operator.pools.kubecalls import PoolApi
from kubemap_operator.pools.pooltasks import EventSink, PoolTasks
from kubemap_operator.pools.reconcile import PoolReconciler
from kubemap_operator.pools.server import DispatcherApp
from kubemap_operator.pools.tokens import dispatcher_key
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.plantypes import Limits

log = logging.getLogger("kubemap.pools")
POOL_RESYNC_SECONDS = 10.0
FINISHED = frozenset(p.value for p in Phase if p.finished)


def has_pool(spec: kopf.Spec, **_: Any) -> bool:
    """The routing rule: a MapTask with spec.pool belongs to the pool-task controller."""
    return bool(spec.get("pool"))


class Spawner:
    """Runs callbacks of the dispatcher (plain functions) as tasks of the operator's loop,
    keeping a reference to each until it ends."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def register(
    registry: kopf.OperatorRegistry,
    settings: Settings,
    api_factory: Callable[[], KubeApi] = KubeApi,
    *,
    post_event: EventSink | None = None,
) -> Dispatcher | None:
    """Add the pool side's handlers to the registry; returns the dispatcher (None: off)."""
    spawn = Spawner()
    dispatcher: Dispatcher | None = None
    if settings.dispatcher_port:
        dispatcher = Dispatcher(
            lease_seconds=settings.lease_seconds,
            limits=Limits(backoff_base_seconds=settings.backoff_base_seconds),
            on_change=lambda key: spawn(lambda: pool_tasks.trigger(*key, log)),
            on_pool_work=lambda key: spawn(lambda: pools.trigger(*key)),
        )
        grants = dispatcher.grant_limits
        metrics.add_limit_source(
            lambda: [("dispatch", f"{k[0]}/{k[1]}", lim.rate) for k, lim in grants.items()]  # type: ignore[index]
        )
    pool_tasks = PoolTasks(api_factory(), settings, dispatcher, post_event=post_event)

    @kopf.on.cleanup(registry=registry)
    async def stop_pool_tasks(**_: Any) -> None:
        await pool_tasks.queue.shutdown()

    @kopf.on.event(
        GROUP, VERSION, PLURAL, id="pooltask-event", when=has_pool, registry=registry
    )  # fmt: skip
    async def pool_task_event(
        *, type: str, name: str, namespace: str | None, logger: Any, **_: Any
    ) -> None:
        if type == "DELETED":
            pool_tasks.forget(namespace or "", name)
            return
        await pool_tasks.trigger(namespace or "", name, logger)

    @kopf.timer(
        GROUP, VERSION, PLURAL, id="pooltask-resync", interval=settings.reconcile_interval,
        when=has_pool, registry=registry,
    )  # fmt: skip
    async def pool_task_timer(
        *, name: str, namespace: str | None, spec: kopf.Spec, status: kopf.Status, logger: Any,
        **_: Any,
    ) -> None:  # fmt: skip
        # A finished task has nothing left to time but its TTL.
        if status.get("phase") in FINISHED and spec.get("ttlSecondsAfterFinished") is None:
            return
        await pool_tasks.trigger(namespace or "", name, logger)

    if dispatcher is None:
        return None  # pool tasks are refused (PoolUnavailable); WorkerPools are not watched
    pools = PoolReconciler(PoolApi(api_factory()), dispatcher, settings, dispatcher_key())
    app = DispatcherApp(dispatcher, pools.key)

    @kopf.on.startup(registry=registry)
    async def start_dispatcher(**_: Any) -> None:
        await app.start(settings.listen_address, settings.dispatcher_port)

    @kopf.on.cleanup(registry=registry)
    async def stop_dispatcher(**_: Any) -> None:
        await app.stop()

    @kopf.on.event(GROUP, VERSION, POOL_PLURAL, id="workerpool-event", registry=registry)
    async def pool_event(*, type: str, name: str, namespace: str | None, **_: Any) -> None:
        if type == "DELETED":
            pools.forget(namespace or "", name)
            return
        await pools.trigger(namespace or "", name)

    @kopf.timer(
        GROUP, VERSION, POOL_PLURAL, id="workerpool-resync", interval=POOL_RESYNC_SECONDS,
        registry=registry,
    )  # fmt: skip
    async def pool_timer(*, name: str, namespace: str | None, **_: Any) -> None:
        await pools.trigger(namespace or "", name)

    return dispatcher
