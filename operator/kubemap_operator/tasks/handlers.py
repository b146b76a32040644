"""kopf handlers: thin, level-based. Every event or timer tick reconciles from what is observed.

* two kopf indexes keep the MapTasks and their pods as the watches show them: a reconcile
  reads them (tasks/watchcache.py), not the API;
* any MapTask event, and a timer per MapTask -> reconcile that task;
* any event of a kubemap worker pod -> reconcile its task, or, when the task is gone or
  being deleted, drop the pod's tracking finalizer so the garbage collector can remove it.
No handler stores progress in the object (no on.create/on.update diffs): the status and the
pods are the whole state, which is what makes restarts safe.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, cast

import kopf
from kubemap.contract import GROUP, LABEL_TASK, PLURAL, POD_FINALIZER, VERSION
from kubemap.core.status import Phase

from kubemap_operator import metrics
from kubemap_operator.kubeapi import KubeApi
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.planner import Event
from kubemap_operator.tasks.reconcile import Reconciler, release_orphan
from kubemap_operator.tasks.watchcache import WatchCache

FINISHED = frozenset(p.value for p in Phase if p.finished)


def post_kopf_event(body: dict[str, Any], event: Event) -> None:
    # Outside a running operator (unit tests) there is no event queue: nothing to post to.
    with contextlib.suppress(LookupError):
        kopf.event(
            kopf.Body(cast(kopf.RawBody, body)),
            type=event.type,
            reason=event.reason,
            message=event.message,
        )


def without_pool(spec: kopf.Spec, **_: Any) -> bool:
    """Tasks with spec.pool belong to the pool-task controller (kubemap_operator.pools)."""
    return not spec.get("pool")


def configure(settings: Settings, kopf_settings: kopf.OperatorSettings) -> None:
    kopf_settings.peering.standalone = True
    # No CRD or namespace watching: the chart grants neither, and the resources are fixed.
    kopf_settings.scanning.disabled = True
    kopf_settings.posting.level = logging.INFO
    kopf_settings.posting.reporting_component = "kubemap-operator"
    # Only kubemap worker pods are watched, filtered by the API server.
    kopf_settings.watching.label_selectors["v1", "pods"] = LABEL_TASK
    # A watch can go silent without an error when its connection dies unseen (kopf #585): bound
    # each stream on the server, cut it a little later on the client, fail connects fast, and
    # reopen a stream that brought nothing, not even a bookmark, for 90 s.
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    kopf_settings.watching.connect_timeout = 10
    kopf_settings.watching.inactivity_timeout = 90
    kopf_settings.networking.connect_timeout = 10
    kopf_settings.persistence.finalizer = "kubemap.io/operator"
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="kubemap.io"
    )
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubemap.io", key="last-handled-configuration"
    )


def build_registry(
    settings: Settings,
    api_factory: Callable[[], KubeApi] = KubeApi,
    *,
    login: Callable[..., Any] | None = None,
) -> tuple[kopf.OperatorRegistry, Callable[[], Reconciler | None]]:
    """A fresh kopf registry with every handler; also returns a getter of the live reconciler."""
    registry = kopf.OperatorRegistry()
    holder: dict[str, Reconciler] = {}

    # The watch cache (tasks/watchcache.py): kopf keeps these indexes from the watches it runs
    # anyway, filled before any handler runs, so a reconcile neither GETs nor LISTs.
    @kopf.index(GROUP, VERSION, PLURAL, id="kubemap_tasks", when=without_pool, registry=registry)
    def kubemap_tasks(
        body: kopf.Body, name: str, namespace: str | None, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return {(namespace or "", name): dict(body)}

    @kopf.index(
        "v1", "pods", id="kubemap_task_pods", labels={LABEL_TASK: kopf.PRESENT}, registry=registry
    )
    def kubemap_task_pods(
        body: kopf.Body, labels: kopf.Labels, namespace: str | None, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return {(namespace or "", str(labels[LABEL_TASK])): dict(body)}

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        configure(settings_, settings)
        # kopf hands startup handlers its live (still empty) indexes: the cache reads them as
        # they fill, from reconciles that run outside kopf's handlers (the work queue's).
        cache = WatchCache(kwargs["kubemap_tasks"], kwargs["kubemap_task_pods"])
        api = api_factory()
        holder["reconciler"] = Reconciler(
            api,
            settings_,
            cache=cache,
            post_event=post_kopf_event,
            queues=api,
        )
        limiter = holder["reconciler"].limiter
        metrics.add_limit_source(lambda: [("apiserver", "", limiter.rate)])

    settings_ = settings

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        # Pending wake-ups are cancelled and runs in flight finish: nothing is cut midway.
        reconciler = holder.get("reconciler")
        if reconciler is not None:
            await reconciler.queue.shutdown()

    if login is not None:
        kopf.on.login(registry=registry)(login)
    else:

        @kopf.on.login(registry=registry)
        def login_default(**kwargs: Any) -> kopf.ConnectionInfo | None:
            return kopf.login_via_client(**kwargs)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="maptask-event", when=without_pool, registry=registry)
    async def task_event(
        *, type: str, name: str, namespace: str | None, logger: Any, **_: Any
    ) -> None:
        reconciler = holder["reconciler"]
        namespace = namespace or ""
        if type == "DELETED":
            reconciler.forget(namespace, name)
            return
        await reconciler.trigger(namespace, name, logger)

    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        id="maptask-resync",
        interval=settings.reconcile_interval,
        when=without_pool,
        registry=registry,
    )
    async def task_timer(
        *,
        name: str,
        namespace: str | None,
        spec: kopf.Spec,
        status: kopf.Status,
        logger: Any,
        **_: Any,
    ) -> None:
        # A finished task has nothing left to time but its TTL (its pods' events still count).
        if status.get("phase") in FINISHED and spec.get("ttlSecondsAfterFinished") is None:
            return
        reconciler = holder["reconciler"]
        if reconciler.backing_off(namespace or "", name):
            return  # its failure backoff wakes it (or a change does): a tick does not cut it short
        await reconciler.trigger(namespace or "", name, logger)

    @kopf.on.event(
        "v1", "pods", id="worker-pod-event", labels={LABEL_TASK: kopf.PRESENT}, registry=registry
    )
    async def pod_event(
        *, body: kopf.Body, meta: kopf.Meta, namespace: str | None, logger: Any, **_: Any
    ) -> None:
        reconciler = holder["reconciler"]
        owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
        terminating = meta.get("deletionTimestamp") and POD_FINALIZER in (
            meta.get("finalizers") or []
        )
        if terminating and await release_orphan(reconciler.api, dict(body)):
            return
        if owner is not None and owner.get("kind") == "MapTask":
            await reconciler.trigger(namespace or "", str(owner.get("name")), logger)

    return registry, lambda: holder.get("reconciler")
