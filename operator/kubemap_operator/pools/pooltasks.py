"""The pool-task controller: MapTasks with spec.pool, run through the dispatcher, not pods.

It sits beside the MapTask (pod) controller, which never sees these tasks (the kopf handlers
route on spec.pool). While a task runs, the dispatcher answers with the status to write (at
most once per FLUSH_SECONDS) and the events to post; a finished task only waits for its TTL,
as any finished task does (it has no pods to clean up); kubemap.io/retry on a finished task
starts a new round through the pool. An operator that runs no dispatcher fails such a task
at once, saying how to enable pools.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import pydantic
from kubemap.contract import ANNOTATION_RETRY
from kubemap.core.status import Phase, Reason
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus
from kubemap.resources.workerpool import ANNOTATION_PYTHON
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubemap_operator import metrics, taskstats
from kubemap_operator.pools.dispatch import Dispatcher
from kubemap_operator.ratelimit import FailureBackoff
from kubemap_operator.settings import Settings
from kubemap_operator.statusfields import (
    clip,
    invalid_spec_message,
    rfc3339,
    set_condition,
    status_wire,
)
from kubemap_operator.tasks import rerun
from kubemap_operator.tasks.finishing import after_finish
from kubemap_operator.tasks.plantypes import Event, Limits
from kubemap_operator.workqueue import WorkQueue

EventSink = Callable[[dict[str, Any], Event], None]
NO_LIMITS = Limits()  # a pool task has no pods: the pod limits of after_finish do not apply


class PoolTaskApi(Protocol):
    """The API calls of this controller (KubeApi is the real one)."""

    async def get_task(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> object: ...
    async def delete_task(self, namespace: str, name: str) -> None: ...


def unavailable_message(pool: str) -> str:
    return clip(
        f"spec.pool is {pool!r}, but this operator runs no warm-pool dispatcher (the chart "
        "value pools.enabled is false): enable it with `helm upgrade ... --set "
        "pools.enabled=true`, or submit the task without spec.pool (pool=) to run it in pods"
    )


def failed(
    old: MapTaskStatus, reason: Reason, message: str, now: datetime, token: str | None = None
) -> MapTaskStatus:
    """The task failed before anything ran (its spec, or no dispatcher): phase, message,
    condition; a rerun token is recorded so the SDK waiting on it gets its answer."""
    moment = rfc3339(now)
    return old.model_copy(
        update={
            "phase": Phase.FAILED,
            "message": message,
            "completion_time": moment,
            "start_time": old.start_time or moment,
            "retry_token": token or old.retry_token,
            "conditions": set_condition(
                list(old.conditions), "Failed", reason=reason.value, message=message, now=now
            ),
        }
    )


class PoolTasks:
    def __init__(
        self,
        api: PoolTaskApi,
        settings: Settings,
        dispatcher: Dispatcher | None,
        *,
        post_event: EventSink | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api = api
        self.settings = settings
        self.dispatcher = dispatcher  # None: the operator runs no dispatcher (pools disabled)
        # API errors back off per task, as the pod reconciler's do (0.5 s doubling to 60 s)
        self.backoff: FailureBackoff[tuple[str, str]] = FailureBackoff()
        self.post_event = post_event or (lambda body, event: None)
        self.clock = clock
        self._loggers: dict[tuple[str, str], Any] = {}
        self.queue: WorkQueue[tuple[str, str]] = WorkQueue(
            self._run_once, longest_delay=settings.reconcile_interval
        )

    async def trigger(self, namespace: str, name: str, logger: Any) -> None:
        self._loggers[(namespace, name)] = logger
        await self.queue.trigger((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        self.queue.forget((namespace, name))
        self._loggers.pop((namespace, name), None)
        metrics.observe_phase(namespace, name, None)
        taskstats.TIMINGS.forget((namespace, name))
        if self.dispatcher is not None:
            self.dispatcher.forget((namespace, name))

    async def _run_once(self, key: tuple[str, str]) -> float | None:
        logger = self._loggers.get(key) or logging.getLogger("kubemap.pools")
        try:
            requeue = await self.reconcile(*key, logger)
        except (ApiException, OSError, HTTPError) as exc:
            code = exc.status if isinstance(exc, ApiException) else None
            if code and code < 500 and code not in (409, 429):
                raise  # refused for good (403, 422...): kopf logs it and backs off
            retry = self.backoff.failed(key)
            logger.warning(f"reconcile failed, retrying in {retry:g}s: {exc}")
            return retry
        self.backoff.succeeded(key)
        return requeue

    async def reconcile(self, namespace: str, name: str, logger: Any) -> float | None:
        body = await self.api.get_task(namespace, name)
        if body is None:
            self.forget(namespace, name)
            return None
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None  # no pods to let go of
        status = MapTaskStatus.model_validate(body.get("status") or {})
        try:
            spec = MapTaskSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as exc:
            message = clip(invalid_spec_message(exc))
            if not (status.phase is Phase.FAILED and status.message == message):
                fresh = MapTaskStatus(start_time=status.start_time)
                failure = failed(fresh, Reason.INVALID_SPEC, message, self.clock())
                await self._fail(body, failure, logger)
            return None
        token = (meta.get("annotations") or {}).get(ANNOTATION_RETRY)
        rerun_asked = bool(token) and token != status.retry_token
        if status.phase.finished and not rerun_asked:
            return await self._wait_for_ttl(namespace, name, spec, status, logger)
        if self.dispatcher is None or spec.pool is None:
            # Pods instead would be the wrong shape (a pool task asks for one item per pod,
            # parallelism 10,000) and not what the user chose: fail before anything runs.
            message = unavailable_message(spec.pool or "")
            refused = failed(status, Reason.POOL_UNAVAILABLE, message, self.clock(), token)
            await self._fail(body, refused, logger)
            return None
        return await self._through_dispatcher(body, spec, status, logger, token)

    async def _fail(self, body: dict[str, Any], status: MapTaskStatus, logger: Any) -> None:
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        await self.api.patch_status(namespace, name, status_wire(status))
        metrics.observe_phase(namespace, name, Phase.FAILED)
        message = status.message or ""
        reason = (status.conditions[-1].reason if status.conditions else None) or "Failed"
        logger.error(message)
        self.post_event(body, Event("Warning", reason, message))

    async def _wait_for_ttl(
        self, namespace: str, name: str, spec: MapTaskSpec, status: MapTaskStatus, logger: Any
    ) -> float | None:
        metrics.observe_phase(namespace, name, status.phase, spec.pool or "")
        plan = after_finish(spec, status, [], self.clock(), NO_LIMITS)
        if plan.delete_task:
            logger.info(
                f"deleting the finished task: ttlSecondsAfterFinished={spec.ttl_seconds_after_finished}"
            )
            await self.api.delete_task(namespace, name)
        return plan.requeue_after

    async def _through_dispatcher(
        self,
        body: dict[str, Any],
        spec: MapTaskSpec,
        status: MapTaskStatus,
        logger: Any,
        token: str | None,
    ) -> float | None:
        dispatcher = self.dispatcher
        assert dispatcher is not None and spec.pool is not None
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        if status.phase.finished:
            # kubemap.io/retry on a finished pool task: the same new round as in pod mode
            # (rerun.honour), served by the pool's workers; no pod is made for it.
            status, note = rerun.honour(spec, status, [], token, self.clock())
            if note is not None:
                self.post_event(body, note)
            if status.phase.finished:  # nothing to rerun (or suspended): record the token only
                await self.api.patch_status(namespace, name, status_wire(status))
                return None
        base = spec.store.url if spec.store is not None else self.settings.default_store
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
            new = taskstats.TIMINGS.with_summary((namespace, name), new)  # items/s, p95...
            await self.api.patch_status(namespace, name, status_wire(new))
            metrics.observe_phase(namespace, name, new.phase, spec.pool)
        for event in events:
            (logger.warning if event.type == "Warning" else logger.info)(
                f"{event.reason}: {event.message}"
            )
            self.post_event(body, event)
        if new is not None and new.phase.finished:
            dispatcher.forget((namespace, name))
            return await self._wait_for_ttl(namespace, name, spec, new, logger)
        return requeue
