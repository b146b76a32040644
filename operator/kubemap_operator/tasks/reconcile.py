"""Reconcile one MapTask: read what is (from the watch cache, no API read), ask the planner,
do what it says, in a safe order.

Order matters for exactly-once counting: the status (the record of outcomes) is written
first; only then do finished pods lose their finalizer or get deleted, and only then are
new pods created. A crash between steps leaves state that the next reconcile, from the
same observations, plans the same way: ranges union idempotently, and deterministic pod
names turn a repeated create into HTTP 409.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pydantic
from kubemap.contract import ANNOTATION_RETRY
from kubemap.core.ranges import IndexRanges
from kubemap.core.speculation import Pace
from kubemap.core.status import Phase, Reason
from kubemap.resources.kueue import kueue_absent_message, missing_queue_message
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubemap_operator import metrics, taskstats
from kubemap_operator.kubeapi import CreateFailed, QueueApi, TaskApi, Throttled, retry_after
from kubemap_operator.ratelimit import FailureBackoff, TokenBucket
from kubemap_operator.settings import Settings
from kubemap_operator.statusfields import (
    clip,
    describe,
    invalid_spec_message,
    rfc3339,
    set_condition,
    status_wire,
)
from kubemap_operator.tasks import logkeeper, speculation
from kubemap_operator.tasks.builder import TaskRef, build_pod, pod_name, task_queue
from kubemap_operator.tasks.filelisting import reconcile_listing
from kubemap_operator.tasks.observe import observe_pod
from kubemap_operator.tasks.planner import Event, Limits, Plan, plan
from kubemap_operator.tasks.watchcache import WatchCache, WriteThrough
from kubemap_operator.workqueue import WorkQueue

EventSink = Callable[[dict[str, Any], Event], None]
CREATE_CONCURRENCY = 8
PACE_NAMES_KEPT = 10_000


def owned_by(pod: dict[str, Any], uid: str) -> bool:
    return any(
        ref.get("uid") == uid for ref in (pod.get("metadata") or {}).get("ownerReferences") or []
    )


class Reconciler:
    def __init__(
        self,
        api: TaskApi,
        settings: Settings,
        *,
        cache: WatchCache,
        limiter: TokenBucket | None = None,
        post_event: EventSink | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        queues: QueueApi | None = None,
    ) -> None:
        self.cache = cache
        self.queues = queues  # None: Kueue queues are not checked (tests without an API)
        self.api = WriteThrough(api, cache)  # what this reconciler writes, the cache shows
        self.kube = api  # the API itself: the log keeper reads logs through its CoreV1Api
        self.settings = settings
        self.limiter = limiter or TokenBucket(settings.pod_create_qps, settings.pod_create_burst)
        self.backoff: FailureBackoff[tuple[str, str]] = FailureBackoff()
        self.post_event = post_event or (lambda body, event: None)
        self.clock = clock
        self.limits = Limits(
            backoff_base_seconds=settings.backoff_base_seconds,
            failed_pods_kept=settings.failed_pods_kept,
        )
        self._batch = max(1, settings.pod_create_burst)
        self._loggers: dict[tuple[str, str], Any] = {}
        self.recorder = taskstats.PodRecorder()  # each finished pod counted once
        # Each task's measured pace (from its succeeded pods), for backups of stragglers;
        # memory only: a restarted operator measures again before it speculates.
        self._pace: dict[tuple[str, str], tuple[Pace, set[str]]] = {}
        self.queue: WorkQueue[tuple[str, str]] = WorkQueue(
            self.run_once, longest_delay=settings.reconcile_interval
        )

    async def trigger(
        self, namespace: str, name: str, logger: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        """Reconcile now; if a reconcile of this task is running, run once more after it."""
        self._loggers[(namespace, name)] = logger
        await self.queue.trigger((namespace, name))

    async def run_once(self, key: tuple[str, str]) -> float | None:
        """Reconcile key once (the queue's callback): seconds until it wants to run again.
        An API hiccup is retried after the key's own exponential backoff (0.5 s, 1 s, 2 s...
        up to 60 s, reset by a success), not after a fixed delay nor kopf's 60 s."""
        namespace, name = key
        logger = self._loggers.get(key) or logging.getLogger("kubemap.operator")
        try:
            delay = await self.reconcile(namespace, name, logger)
        except (ApiException, OSError, HTTPError) as exc:
            if isinstance(exc, ApiException) and exc.status == 429:
                # A status patch or delete throttled: the API server's limiter slows down and
                # the key waits as told; a throttle is no failure (no backoff step spent).
                wait = retry_after(exc)
                self.limiter.throttled(wait)
                logger.info(f"API server asked to slow down (429), retrying in {wait:g}s")
                return max(wait, 1.0 / self.limiter.rate)
            if (
                isinstance(exc, ApiException)
                and exc.status
                and exc.status < 500
                and exc.status not in (409, 429)
            ):
                raise  # refused for good (403, 422...): kopf logs it and backs off
            retry = self.backoff.failed(key)
            failures = self.backoff.failures(key)
            logger.warning(f"reconcile failed ({failures} in a row), retrying in {retry:g}s: {exc}")
            return retry
        self.backoff.succeeded(key)
        return delay

    def backing_off(self, namespace: str, name: str) -> bool:
        """The task's last reconcile failed and its backoff runs: a timer tick waits for it."""
        return self.backoff.waiting((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        self.queue.forget((namespace, name))
        self.backoff.succeeded((namespace, name))
        self.cache.forget(namespace, name)
        self._loggers.pop((namespace, name), None)
        self._pace.pop((namespace, name), None)
        metrics.observe_phase(namespace, name, None)
        self.recorder.forget((namespace, name))
        taskstats.TIMINGS.forget((namespace, name))

    async def reconcile(self, namespace: str, name: str, logger: Any) -> float | None:
        started = time.monotonic()
        try:
            return await self._reconcile(namespace, name, logger)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)

    async def _reconcile(self, namespace: str, name: str, logger: Any) -> float | None:
        body = self.cache.task(namespace, name)
        if body is None:
            self.forget(namespace, name)
            return None
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        pods = [p for p in self.cache.pods(namespace, name) if owned_by(p, uid)]
        if meta.get("deletionTimestamp"):
            await self._let_go(namespace, pods)
            return None
        try:
            spec = MapTaskSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as exc:
            await self._reject(namespace, name, body, exc, logger)
            return None
        status = MapTaskStatus.model_validate(body.get("status") or {})
        if not pods and status.phase is Phase.PENDING and not spec.suspend:
            refusal = await self._queue_refusal(namespace, spec)
            if refusal is not None:  # its pods would wait gated for ever: fail at once
                await self._refuse(namespace, name, body, Reason.QUEUE_UNAVAILABLE, refusal, logger)
                return None
        if spec.files is not None:  # the files are listed (in a pod) before anything runs
            ref = TaskRef(name, namespace, uid)
            now = self.clock()
            listed = await reconcile_listing(
                self.api, self.settings, ref, spec, status, pods, now, logger
            )
            if listed is None:
                return None
            spec, status = listed
        now = self.clock()
        observed = [o for o in (observe_pod(p, now) for p in pods) if o is not None]
        pace, seen = self._pace.setdefault((namespace, name), (Pace(), set()))
        if len(seen) > PACE_NAMES_KEPT:
            seen.clear()  # a pod counted twice only nudges a median
        speculation.observe_pace(pace, seen, observed)
        result = plan(
            spec,
            status,
            observed,
            now,
            generation=meta.get("generation"),
            limits=self.limits,
            retry_token=(meta.get("annotations") or {}).get(ANNOTATION_RETRY),
            stop_first=True,  # a verdict first stops the running pods, then counts them
            seconds_per_item=pace.seconds_per_item,
        )
        recorded = (*result.release, *result.delete)  # metrics and the status's summary:
        self.recorder.recorded((namespace, name), observed, pods, recorded, result.status)
        await self._apply(TaskRef(name, namespace, uid), body, spec, status, result, pods, logger)
        metrics.observe_phase(namespace, name, result.status.phase)
        if len(result.create) > self._batch:
            return 0.05 if result.requeue_after is None else min(0.05, result.requeue_after)
        return result.requeue_after

    async def _apply(
        self,
        task: TaskRef,
        body: dict[str, Any],
        spec: MapTaskSpec,
        old: MapTaskStatus,
        result: Plan,
        pods: list[dict[str, Any]],
        logger: Any,
    ) -> None:
        if result.status != old:
            written = taskstats.TIMINGS.with_summary((task.namespace, task.name), result.status)
            await self.api.patch_status(task.namespace, task.name, status_wire(written))
            newly_failed = IndexRanges.parse(result.status.failed_indexes) - IndexRanges.parse(
                old.failed_indexes
            )
            if newly_failed:
                metrics.INDEXES_FAILED.inc(len(newly_failed))
        for event in result.events:
            (logger.warning if event.type == "Warning" else logger.info)(
                f"{event.reason}: {event.message}"
            )
            self.post_event(body, event)
        by_name = {(p.get("metadata") or {}).get("name"): p for p in pods}
        for pod_name_ in (*result.release, *result.delete):
            pod = by_name.get(pod_name_)
            if pod is not None:
                await self.api.remove_finalizer(task.namespace, pod)
        doomed = [by_name[n] for n in result.delete if n in by_name]
        await logkeeper.keep_failed(self.kube, task.namespace, body, doomed, logger)
        for pod_name_ in result.delete:
            await self.api.delete_pod(task.namespace, pod_name_)
            self.cache.deleted_pod(task.namespace, task.name, pod_name_)
            metrics.PODS_DELETED.labels(namespace=task.namespace).inc()
        for pod_name_ in result.stop:  # keeps its finalizer: its outcome is still to record
            await self.api.delete_pod(task.namespace, pod_name_)
        if result.create:
            await self._create(task, body, spec, result, logger)
        if result.delete_task:
            logger.info(
                f"deleting the finished task: ttlSecondsAfterFinished={spec.ttl_seconds_after_finished}"
            )
            await self.api.delete_task(task.namespace, task.name)

    async def _create(
        self, task: TaskRef, body: dict[str, Any], spec: MapTaskSpec, result: Plan, logger: Any
    ) -> None:
        semaphore = asyncio.Semaphore(CREATE_CONCURRENCY)
        started: list[tuple[int, int]] = []
        retried: list[int] = []
        requeued: list[int] = []
        backups: list[int] = []
        stop: list[str] = []

        async def one(request: Any) -> None:
            async with semaphore:
                if stop:
                    return
                await self.limiter.acquire()
                if stop:  # throttled or refused while this one waited for a token
                    return
                manifest = build_pod(task, spec, request, self.settings)
                try:
                    outcome = await self.api.create_pod(task.namespace, manifest)
                except Throttled as exc:
                    self.limiter.throttled(exc.retry_after)
                    stop.append(
                        f"API server asked to slow down (429), retrying in {exc.retry_after:.0f}s"
                    )
                    return
                except CreateFailed as exc:
                    stop.append(
                        f"pod {manifest['metadata']['name']} refused ({exc.status}): {exc.reason}"
                    )
                    return
                self.limiter.succeeded()
                if outcome == "created":
                    metrics.PODS_CREATED.labels(namespace=task.namespace).inc()
                    started.append((request.start, request.start + request.count))
                    if request.backup:  # a copy of a straggler: not a retry
                        backups.append(request.start)
                    elif request.requeue:  # preempted by Kueue: run again, not a retry
                        requeued.append(request.start)
                    elif request.attempt > 0:
                        retried.append(request.start)

        # One reconcile creates at most a burst of pods, so it stays short and the status
        # fresh; the pods' own events (and a quick requeue) bring the next round.
        await asyncio.gather(*(one(r) for r in result.create[: self._batch]))
        counted: dict[str, int | float | None] = {}
        if retried:  # the status reports the retries spent: one write per round, not per pod
            counted["retries"] = result.status.retries + len(retried)
        if requeued:
            counted["preempted"] = result.status.preempted + len(requeued)
        if backups:
            counted["speculated"] = result.status.speculated + len(backups)
        rate = round(self.limiter.rate, 1) if self.limiter.limited else None
        if rate != result.status.pod_create_rate and (counted or stop or rate is None):
            counted["podCreateRate"] = rate  # shown while throttled, removed once recovered
        if counted:
            await self.api.patch_status(task.namespace, task.name, counted)
        if started:
            ranges = IndexRanges.from_spans(started)
            event = Event(
                "Normal",
                "PodsStarted",
                f"started {len(started)} pod(s) for indices {describe(ranges)}",
            )
            logger.info(event.message)
            self.post_event(body, event)
        if stop:
            logger.warning(stop[0])
            self.post_event(body, Event("Warning", "PodCreateFailed", clip(stop[0], 1000)))

    async def _let_go(self, namespace: str, pods: list[dict[str, Any]]) -> None:
        """The task is being deleted: free its pods so the garbage collector can remove them."""
        for pod in pods:
            await self.api.remove_finalizer(namespace, pod)

    async def _queue_refusal(self, namespace: str, spec: MapTaskSpec) -> str | None:
        """Why the task's Kueue queue cannot admit its pods (None: it can, or no queue): read
        once, before its first pod, so a YAML user hears it as an SDK user does."""
        queue = task_queue(spec, self.settings)
        if queue is None or self.queues is None:
            return None
        found = await self.queues.find_local_queue(namespace, queue)
        if found == "unknown":
            logging.getLogger("kubemap.operator").warning(
                f"cannot read LocalQueue {namespace}/{queue} (403): give the operator get on "
                "localqueues.kueue.x-k8s.io (the chart's RBAC does); its pods go to Kueue unchecked"
            )
        if found == "no-kueue":
            return kueue_absent_message(queue)
        if found == "missing":
            if not spec.queue_name:
                return missing_queue_message(queue, namespace) + (
                    " (the operator's default queue, chart value kueue.defaultQueue)"
                )
            return missing_queue_message(queue, namespace)
        return None

    async def _reject(
        self,
        namespace: str,
        name: str,
        body: dict[str, Any],
        exc: pydantic.ValidationError,
        logger: Any,
    ) -> None:
        message = clip(invalid_spec_message(exc))
        await self._refuse(namespace, name, body, Reason.INVALID_SPEC, message, logger)

    async def _refuse(
        self,
        namespace: str,
        name: str,
        body: dict[str, Any],
        reason: Reason,
        message: str,
        logger: Any,
    ) -> None:
        """Fail the task before it ran anything: condition Failed with `reason`."""
        message = clip(message)
        old = MapTaskStatus.model_validate(body.get("status") or {})
        if old.phase is Phase.FAILED and old.message == message:
            return
        moment = self.clock()
        now = rfc3339(moment)
        failed = MapTaskStatus(
            phase=Phase.FAILED,
            message=message,
            completion_time=now,
            start_time=old.start_time or now,
            conditions=set_condition(
                [], "Failed", reason=reason.value, message=message, now=moment
            ),
        )
        await self.api.patch_status(namespace, name, status_wire(failed))
        logger.error(message)
        self.post_event(body, Event("Warning", reason.value, message))


async def release_orphan(api: TaskApi, pod: dict[str, Any]) -> bool:
    """A pod with our finalizer whose task is gone or being deleted: drop the finalizer.

    Asks the API server, not the watch cache: the pod's deletion can be seen before its task's,
    and a cache still showing the task would keep the finalizer with no event left to drop it.
    Only pods being deleted with the finalizer on come here, not every reconcile."""
    meta = pod.get("metadata") or {}
    namespace = str(meta.get("namespace", ""))
    owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if owner is None:
        await api.remove_finalizer(namespace, pod)
        return True
    try:
        task = await api.get_task(namespace, str(owner.get("name")))
    except ApiException:
        return False
    gone = task is None or (task.get("metadata") or {}).get("uid") != owner.get("uid")
    if gone or (task or {}).get("metadata", {}).get("deletionTimestamp"):
        await api.remove_finalizer(namespace, pod)
        return True
    return False


__all__ = ["Reconciler", "pod_name", "release_orphan"]
