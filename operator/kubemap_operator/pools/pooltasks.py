"""A MapTask with spec.pool, reconciled through the dispatcher instead of pods.

The reconciler hands such a task here while it runs; the dispatcher answers with the
status to write (at most once per FLUSH_SECONDS) and the events to post. A finished pool
task goes back to the ordinary path, which only waits for its TTL (it has no pods).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus
from kubemap.resources.workerpool import ANNOTATION_PYTHON

from kubemap_operator import metrics
from kubemap_operator.tasks import rerun

if TYPE_CHECKING:
    from kubemap_operator.tasks.reconcile import Reconciler


async def reconcile_pool_task(
    reconciler: Reconciler,
    body: dict[str, Any],
    spec: MapTaskSpec,
    status: MapTaskStatus,
    logger: Any,
    retry_token: str | None = None,
) -> float | None:
    from kubemap_operator.tasks.reconcile import status_wire  # the reconciler imports this module

    dispatcher = reconciler.dispatcher
    assert dispatcher is not None
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    if status.phase.finished:
        # kubemap.io/retry on a finished pool task: the same new round as in pod mode
        # (rerun.honour), served by the pool's workers; no pod is made for it.
        status, note = rerun.honour(spec, status, [], retry_token, reconciler.clock())
        if note is not None:
            reconciler.post_event(body, note)
        if status.phase.finished:  # nothing to rerun (or suspended): record the token only
            await reconciler.api.patch_status(namespace, name, status_wire(status))
            return None
    base = spec.store.url if spec.store is not None else reconciler.settings.default_store
    python = (meta.get("annotations") or {}).get(ANNOTATION_PYTHON)
    new, events, requeue = dispatcher.sync(
        (namespace, name),
        str(meta.get("uid", "")),
        spec,
        status,
        f"{base.rstrip('/')}/{name}",
        python,
        meta.get("generation"),
    )
    if new is not None:
        await reconciler.api.patch_status(namespace, name, status_wire(new))
        metrics.observe_phase(namespace, name, new.phase)
    for event in events:
        (logger.warning if event.type == "Warning" else logger.info)(
            f"{event.reason}: {event.message}"
        )
        reconciler.post_event(body, event)
    if new is not None and new.phase.finished:
        dispatcher.forget((namespace, name))
        return 0.05  # the ordinary path takes over: TTL
    return requeue
