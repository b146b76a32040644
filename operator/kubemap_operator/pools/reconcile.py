"""Reconcile one WorkerPool: its token Secret, its worker Deployment, its small status.

Level-based like the MapTask reconcile: every event or timer tick looks at the pool, the
Deployment and the dispatcher's view of the workers, and writes only what differs. The
replica count is `replicas` while the pool has work (or was busy within idleTTLSeconds),
else `minReplicas`; a task arriving on an idle pool triggers a reconcile at once.

A pool with spec.queueName is Kueue's to admit: its status counts the workers admitted and
the workers waiting for quota (census.py, from a LIST of its pods), the dispatcher sizes chunks by
the admitted ones, and a queue that cannot admit anything is said in status.message: Kueue
absent (no worker runs: unqueued workers would bypass the quota the pool asked for), or a
LocalQueue that does not exist (the workers wait, gated, until it does).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pydantic
from kubemap.resources.kueue import QUEUE_LABEL, kueue_absent_message, missing_queue_message
from kubemap.resources.workerpool import (
    WorkerPoolSpec,
    WorkerPoolStatus,
    pool_resource_name,
)
from kubernetes.client.exceptions import ApiException

from kubemap_operator import metrics
from kubemap_operator.pools.builder import (
    ANNOTATION_TEMPLATE_HASH,
    deployment,
    token_secret,
)
from kubemap_operator.pools.census import count_workers
from kubemap_operator.pools.dispatch import Dispatcher, PoolKey
from kubemap_operator.pools.kubecalls import PoolApi
from kubemap_operator.pools.tokens import pool_token
from kubemap_operator.settings import Settings
from kubemap_operator.statusfields import clip, rfc3339
from kubemap_operator.tasks.observe import parse_time

log = logging.getLogger("kubemap.pools")


class PoolReconciler:
    def __init__(
        self,
        api: PoolApi,
        dispatcher: Dispatcher,
        settings: Settings,
        key: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api = api
        self.dispatcher = dispatcher
        self.settings = settings
        self.key = key
        self.clock = clock
        self._secrets: set[tuple[str, str, str]] = set()  # written by this process
        self._served_base: dict[PoolKey, int] = {}
        self._locks: dict[PoolKey, asyncio.Lock] = {}
        self._again: set[PoolKey] = set()
        self._timers: dict[PoolKey, asyncio.TimerHandle] = {}

    async def trigger(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            self._again.add(key)
            return
        async with lock:
            while True:
                self._again.discard(key)
                try:
                    requeue = await self.reconcile(namespace, name)
                except (ApiException, OSError) as exc:
                    log.warning(f"pool {namespace}/{name}: reconcile failed, retrying: {exc}")
                    requeue = 2.0
                if requeue is not None:
                    self._schedule(key, requeue)
                if key not in self._again:
                    break

    def _schedule(self, key: PoolKey, delay: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(
            max(0.05, delay), lambda: loop.create_task(self.trigger(*key))
        )

    async def queue_problem(self, namespace: str, queue: str) -> tuple[str, bool] | None:
        """What stops the queue from admitting the pool's workers: (message, whether to run
        no worker at all), or None when nothing does."""
        found = await self.api.find_local_queue(namespace, queue)
        if found == "no-kueue":
            return kueue_absent_message(queue) + "; no worker runs until then", True
        if found == "missing":
            return missing_queue_message(queue, namespace), False
        return None

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()
        self.dispatcher.pools.pop(key, None)
        metrics.forget_pool(namespace, name)

    async def reconcile(self, namespace: str, name: str) -> float | None:
        body = await self.api.get_pool(namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            self.forget(namespace, name)
            return None  # the garbage collector removes the Deployment and the Secret
        meta = body["metadata"]
        uid = str(meta.get("uid", ""))
        key = (namespace, name)
        old = WorkerPoolStatus.model_validate(body.get("status") or {})
        try:
            spec = WorkerPoolSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as exc:
            invalid = clip(f"invalid spec: {exc.errors()[0].get('msg')}; fix the WorkerPool")
            if old.message != invalid:
                await self.api.patch_pool_status(namespace, name, {"message": invalid})
            return None
        state = self.dispatcher.pool(key)
        state.uid = uid
        if (namespace, name, uid) not in self._secrets:
            token = pool_token(self.key, namespace, name, uid)
            await self.api.put_secret(namespace, token_secret(namespace, name, uid, token))
            self._secrets.add((namespace, name, uid))
        now = self.clock()
        busy_at = (
            state.last_work
            or parse_time(old.idle_since)
            or parse_time(meta.get("creationTimestamp"))
            or now
        )
        has_work = self.dispatcher.has_work(key)
        idle_for = 0.0 if has_work else (now - busy_at).total_seconds()
        ttl = spec.idle_ttl_seconds
        scaled_down = ttl > 0 and idle_for >= ttl
        replicas = spec.min_replicas if scaled_down else spec.replicas
        problem = await self.queue_problem(namespace, spec.queue_name) if spec.queue_name else None
        if problem is not None and problem[1]:
            replicas = 0
        ready = await self._ensure_deployment(namespace, name, uid, spec, replicas)
        counts = (
            count_workers(await self.api.list_pool_pods(namespace, name))
            if spec.queue_name
            else None
        )
        # Workers that lease, or are about to: the admitted ones of a queued pool (the gated
        # ones never run), every wanted one of another.
        state.runnable = min(replicas, counts.admitted) if counts is not None else replicas
        workers = self.dispatcher.live_workers(key)
        busy = sum(1 for w in workers if w.busy)
        pythons = sorted({w.python for w in workers if w.python})
        base = self._served_base.setdefault(key, old.tasks_served)
        status = WorkerPoolStatus(
            replicas=replicas,
            ready=ready,
            busy=min(busy, ready),
            idle=max(0, ready - busy),
            tasks_served=max(old.tasks_served, base + len(state.tasks_done)),
            python_version=",".join(pythons) or old.python_version,
            idle_since=None if has_work else rfc3339(busy_at),
            admitted=counts.admitted if counts is not None else None,
            waiting=counts.waiting if counts is not None else None,
            message=clip(problem[0]) if problem is not None else None,
        )
        metrics.observe_pool_workers(
            namespace, name, wanted=replicas, ready=ready, busy=status.busy, idle=status.idle
        )
        if status != old:
            wire = status.model_dump(by_alias=True, mode="json")
            await self.api.patch_pool_status(namespace, name, wire)
        if not has_work and ttl > 0 and not scaled_down:
            return ttl - idle_for + 0.5  # wake up to scale down
        made = counts.admitted + counts.waiting if counts is not None else replicas
        if ready != state.runnable or made != replicas:
            # Follow the workers coming up or going away. Workers waiting for quota are
            # steady: the resync timer sees them admitted.
            return 2.0
        return None

    async def _ensure_deployment(
        self, namespace: str, name: str, uid: str, spec: WorkerPoolSpec, replicas: int
    ) -> int:
        """Create or correct the Deployment; return how many workers are ready."""
        wanted = deployment(namespace, name, uid, spec, replicas, self.settings)
        current = await self.api.get_deployment(namespace, pool_resource_name(name))
        if current is None:
            await self.api.create_deployment(namespace, wanted)
            return 0
        patch: dict[str, Any] = {}
        if (current.get("spec") or {}).get("replicas") != replicas:
            patch["spec"] = {"replicas": replicas}
        want_hash = wanted["metadata"]["annotations"][ANNOTATION_TEMPLATE_HASH]
        have_hash = ((current.get("metadata") or {}).get("annotations") or {}).get(
            ANNOTATION_TEMPLATE_HASH
        )
        if have_hash != want_hash:
            template = copy.deepcopy(wanted["spec"]["template"])
            # merge patch: None removes the queue label of a pool taken out of its queue
            template["metadata"]["labels"][QUEUE_LABEL] = spec.queue_name
            patch.setdefault("spec", {})["template"] = template
            patch["metadata"] = {
                "annotations": {ANNOTATION_TEMPLATE_HASH: want_hash},
                "labels": {QUEUE_LABEL: spec.queue_name},
            }
        if patch:
            await self.api.patch_deployment(namespace, pool_resource_name(name), patch)
        return int((current.get("status") or {}).get("readyReplicas") or 0)
