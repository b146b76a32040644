"""The dispatcher: hands out leases on the chunks of pool tasks, another adapter of plan().

State lives in memory and is rebuilt, after a restart, from what outlives the process: the
MapTask status (indices recorded as succeeded or failed) and the store (result objects are
write-once, and a re-leased slice of a recovered task skips indices that have results). So
a restart loses nothing but the leases in flight, whose chunks are simply offered again.

Progress reaches the API only through `sync`, which the reconciler calls and which hands
back a status at most once per FLUSH_SECONDS (and at once when the task finishes): no
Kubernetes write per item or per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from kubemap.core.policy import FailureBudget, decisive_failure
from kubemap.core.status import Phase
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus

from kubemap_operator.pools.leases import Lease, Leases, chunk_floor, guided_chunk
from kubemap_operator.pools.retrystate import restore_counts, with_counts
from kubemap_operator.statusfields import rfc3339, set_condition
from kubemap_operator.tasks.observe import PodState, WorkerReport
from kubemap_operator.tasks.planner import Event, Limits, plan
from kubemap_operator.tasks.plantypes import Plan

FLUSH_SECONDS = 1.0
# A verdict that ends a task (cancelled, failed fast, out of time) while leases run takes them
# back first and waits this long for their workers to stop and report what they kept, so the
# verdict counts the items that finished (lose nothing done); a worker silent that long is
# stuck or gone, and its lease is dropped.
STOP_WAIT_SECONDS = 3.0
WORKER_GONE_SECONDS = 60.0  # a worker not heard from this long is no longer counted
TaskKey = tuple[str, str]  # namespace, MapTask name
PoolKey = tuple[str, str]  # namespace, WorkerPool name


@dataclass
class PoolTask:
    key: TaskKey
    uid: str
    pool: PoolKey
    spec: MapTaskSpec
    status: MapTaskStatus
    task_url: str
    python: str | None
    recovered: bool  # known to an earlier operator: results may exist that the status lacks
    leases: Leases = field(default_factory=Leases)
    flushed: MapTaskStatus | None = None
    flushed_at: datetime | None = None
    events: list[Event] = field(default_factory=list)
    served_by: set[str] = field(default_factory=set)
    seconds_per_item: float | None = None  # measured from finished leases (moving average)
    stopping_until: datetime | None = None  # its leases were taken back: the verdict waits


@dataclass
class Worker:
    name: str
    python: str
    seen: datetime
    busy: bool = False
    # Wakes this worker's long-polling heartbeat: a lease of it was taken back (it stops the
    # function at once, not at its next heartbeat), or it asked for new work (the heartbeat
    # of its previous lease is over).
    nudge: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class PoolState:
    key: PoolKey
    uid: str = ""
    workers: dict[str, Worker] = field(default_factory=dict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    last_work: datetime | None = None
    tasks_done: set[str] = field(default_factory=set)
    replicas: int = 0  # workers the pool reconcile wants: sizes chunks before they are all up


@dataclass(frozen=True)
class Grant:
    """A lease as the worker gets it."""

    lease_id: str
    task: str
    task_url: str
    start: int
    count: int
    total: int
    attempt: int
    lease_seconds: float
    packages: tuple[str, ...] = ()  # the task's own runtime packages (the pool's are in env)
    # Changes with each rerun round (kubemap.io/retry): MapRun.retry(fn=...) may have
    # replaced fn.pkl under the same URL, so a worker must not keep the old function.
    version: str = ""
    # A user failure in this chunk ends the task (no failure tolerated, the chunk's last
    # attempt): the worker leaves the items after it unrun (kubemap's default, fail-fast).
    stop_at_failure: bool = False


class Dispatcher:
    def __init__(
        self,
        *,
        lease_seconds: float = 15.0,
        limits: Limits | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_change: Callable[[TaskKey], None] | None = None,
        on_pool_work: Callable[[PoolKey], None] | None = None,
    ) -> None:
        self.lease_seconds = lease_seconds
        self.limits = limits or Limits()
        self.clock = clock
        self.on_change = on_change or (lambda key: None)
        self.on_pool_work = on_pool_work or (lambda key: None)
        self.tasks: dict[TaskKey, PoolTask] = {}
        self.pools: dict[PoolKey, PoolState] = {}
        self._turn = itertools.count()
        # The operator is stopping: long polls answer at once and no lease is granted (it
        # would die with this process); the workers ask the next operator.
        self.closing = False

    # -- pools ----------------------------------------------------------------------
    def pool(self, key: PoolKey) -> PoolState:
        if key not in self.pools:
            self.pools[key] = PoolState(key)
        return self.pools[key]

    def pool_uid(self, key: PoolKey) -> str | None:
        state = self.pools.get(key)
        return state.uid if state and state.uid else None

    def live_workers(self, key: PoolKey) -> list[Worker]:
        now = self.clock()
        horizon = now - timedelta(seconds=WORKER_GONE_SECONDS)
        state = self.pools.get(key)
        return [w for w in (state.workers.values() if state else ()) if w.seen >= horizon]

    def pool_tasks(self, key: PoolKey) -> list[PoolTask]:
        return [t for t in self.tasks.values() if t.pool == key]

    def has_work(self, key: PoolKey) -> bool:
        return any(not t.status.phase.finished for t in self.pool_tasks(key))

    # -- tasks (called by the reconciler) -------------------------------------------
    def sync(
        self,
        key: TaskKey,
        uid: str,
        spec: MapTaskSpec,
        status: MapTaskStatus,
        task_url: str,
        python: str | None,
        generation: int | None,
    ) -> tuple[MapTaskStatus | None, list[Event], float | None]:
        """Register or refresh a task; return (status to write or None, events, requeue)."""
        assert spec.pool is not None
        task = self.tasks.get(key)
        if task is None or task.uid != uid:
            task = PoolTask(
                key=key,
                uid=uid,
                pool=(key[0], spec.pool),
                spec=spec,
                status=status,
                task_url=task_url,
                python=python,
                recovered=status.start_time is not None,
                flushed=status,
            )
            self.tasks[key] = task
            if task.recovered:
                restore_counts(task.status, task.leases, self.clock())
            self.on_pool_work(task.pool)
            self.pool(task.pool).wakeup.set()  # idle workers long-polling: here is work
        task.spec = spec
        if status.retry_token != task.status.retry_token and not status.phase.finished:
            # A rerun round (kubemap.io/retry) of a task this dispatcher saw finish.
            task.status, task.leases, task.recovered, task.flushed = status, Leases(), True, status
        if status.phase.finished and not task.status.phase.finished:
            task.status = status  # finished elsewhere (an older operator): follow the API
            self._revoke_all(task)
        was_finished = task.status.phase.finished
        self._replan(task, generation=generation)
        if task.status.phase.finished and not was_finished:
            self.on_pool_work(task.pool)  # cancelled or timed out: the pool's status follows
        events, task.events = task.events, []
        now = self.clock()
        if task.flushed is not None and task.status == task.flushed:
            return None, events, None if task.status.phase.finished else FLUSH_SECONDS
        due = task.flushed_at is None or (now - task.flushed_at).total_seconds() >= FLUSH_SECONDS
        if due or task.status.phase.finished:
            task.flushed, task.flushed_at = task.status, now
            return task.status, events, None if task.status.phase.finished else FLUSH_SECONDS
        wait = FLUSH_SECONDS - (now - (task.flushed_at or now)).total_seconds()
        return None, events, max(0.05, wait)

    def forget(self, key: TaskKey) -> None:
        task = self.tasks.pop(key, None)
        if task is not None:
            self._revoke_all(task)  # deleted: its workers stop, their reports get 410
            self.pool(task.pool).wakeup.set()

    # -- workers (called by the HTTP server) ----------------------------------------
    def close(self) -> None:
        """Wake every long poll (leases and heartbeats) to answer now: the operator stops."""
        self.closing = True
        for state in self.pools.values():
            state.wakeup.set()
            for worker in state.workers.values():
                worker.nudge.set()

    def seen(self, pool: PoolKey, worker: str, python: str) -> None:
        state = self.pool(pool)
        known = state.workers.get(worker)
        if known is None:
            state.workers[worker] = Worker(worker, python, self.clock())
        else:
            known.seen, known.python = self.clock(), python

    async def lease(
        self, pool: PoolKey, worker: str, python: str, wait_seconds: float
    ) -> Grant | None:
        """A chunk for this worker, waiting up to wait_seconds for one (long poll)."""
        state = self.pool(pool)
        deadline = asyncio.get_running_loop().time() + wait_seconds
        self._nudge(pool, worker)
        while True:
            self.seen(pool, worker, python)
            if self.closing:
                return None
            grant = self._offer(pool, worker, python)
            was_busy = state.workers[worker].busy
            state.workers[worker].busy = grant is not None
            if was_busy != (grant is not None):  # `kubectl get wp` shows BUSY as it changes
                self.on_pool_work(pool)  # (e.g. idle at once after stopping a cancelled task)
            if grant is not None:
                return grant
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return None
            state.wakeup.clear()
            # Wake on new work, or after a second for retries whose backoff ran out.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wakeup.wait(), timeout=min(1.0, left))

    def heartbeat(self, pool: PoolKey, worker: str, lease_ids: list[str]) -> list[str]:
        """Renew the worker's leases; return the ids it no longer holds (task gone, expired)."""
        lost = []
        now = self.clock()
        for lease_id in lease_ids:
            found = self._find(pool, lease_id)
            if found is None or found[1].state is not PodState.ACTIVE or found[1].revoked:
                lost.append(lease_id)
            else:
                found[1].renew(now, self.lease_seconds)
        return lost

    async def watch(
        self, pool: PoolKey, worker: str, lease_ids: list[str], wait_seconds: float
    ) -> list[str]:
        """A heartbeat that long-polls: renew now, then answer as soon as one of the leases
        is taken back (task cancelled, deleted, finished) or after wait_seconds."""
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while True:
            known = self.pool(pool).workers.get(worker)
            if known is not None:
                known.nudge.clear()  # before the check: a nudge from now on is not missed
            lost = self.heartbeat(pool, worker, lease_ids)
            left = deadline - asyncio.get_running_loop().time()
            if lost or left <= 0 or known is None or self.closing:
                return lost
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(known.nudge.wait(), timeout=left)

    def _nudge(self, pool: PoolKey, worker: str) -> None:
        known = self.pool(pool).workers.get(worker)
        if known is not None:
            known.nudge.set()

    def report(
        self, pool: PoolKey, lease_id: str, kind: str, report: WorkerReport | None, why: str = ""
    ) -> bool:
        """The worker finished (or gave up) its lease; False if the lease is unknown."""
        found = self._find(pool, lease_id)
        if found is None:
            return False
        task, lease = found
        if lease.state is PodState.ACTIVE:
            now = self.clock()
            lease.finish(kind, report, now, why)
            if kind == "ok":
                took = (now - (lease.leased_at or now)).total_seconds() / lease.count
                old = task.seconds_per_item
                task.seconds_per_item = took if old is None else 0.7 * old + 0.3 * took
        worker = self.pool(pool).workers.get(lease.worker)
        if worker is not None:
            worker.busy = False
        before = task.status.phase
        self._replan(task)
        self.pool(pool).wakeup.set()
        if task.status.phase.finished and not before.finished:
            self.pool(pool).tasks_done.add(task.uid)
            self.on_change(task.key)
            self.on_pool_work(pool)  # refresh the pool's status: tasks served, idle since
        return True

    # -- the plan adapter -------------------------------------------------------------
    def _find(self, pool: PoolKey, lease_id: str) -> tuple[PoolTask, Lease] | None:
        task_name, _, lease_name = lease_id.partition("/")
        task = self.tasks.get((pool[0], task_name))
        if task is None or task.pool != pool:
            return None
        lease = task.leases.by_name.get(lease_name)
        return (task, lease) if lease is not None else None

    def _plan(self, task: PoolTask, chunk: int, generation: int | None = None) -> Plan:
        spec = task.spec.model_copy(update={"items_per_pod": chunk})
        now = self.clock()
        if task.leases.expire(now):
            self.pool(task.pool).wakeup.set()
        return plan(
            spec,
            task.status,
            task.leases.observed(),
            now,
            generation=generation,
            limits=self.limits,
        )

    def _apply(self, task: PoolTask, result: Plan) -> None:
        task.status = result.status
        task.events.extend(result.events)
        finished = [
            n for n in (*result.release, *result.delete)
            if (lease := task.leases.by_name.get(n)) is not None and lease.state is not PodState.ACTIVE
        ]  # fmt: skip
        task.leases.drop(finished)
        if task.status.phase.finished:
            self._revoke_all(task)  # their reports will get 410 Gone
        task.status = with_counts(task.status, task.leases)

    def _revoke_all(self, task: PoolTask) -> None:
        """Take back every lease of a task that is over: its workers stop the function."""
        holders = {lease.worker for lease in task.leases.active()}
        task.leases.drop(list(task.leases.by_name))
        for worker in holders:
            self._nudge(task.pool, worker)

    def _replan(self, task: PoolTask, generation: int | None = None) -> None:
        if task.status.phase.finished:
            return
        result = self._plan(task, self._chunk(task), generation)
        if self._hold(task, result):
            return
        self._apply(task, result)
        if not task.status.phase.finished:
            self.pool(task.pool).last_work = self.clock()

    def _hold(self, task: PoolTask, result: Plan) -> bool:
        """A verdict that ends the task while leases run: take them back (their workers stop
        and report what finished) and hold the verdict until they have, or STOP_WAIT_SECONDS
        passed; True while it is held."""
        active = task.leases.active()
        if not result.status.phase.finished or not active:
            return False
        now = self.clock()
        if task.stopping_until is None:
            task.stopping_until = now + timedelta(seconds=STOP_WAIT_SECONDS)
            for lease in active:
                lease.revoked = True
                self._nudge(task.pool, lease.worker)
        return now < task.stopping_until

    def _chunk(self, task: PoolTask) -> int:
        if task.leases.expire(self.clock()):  # a lost lease is remaining work again
            self.pool(task.pool).wakeup.set()
        done = task.status.succeeded + task.status.failed
        leased = sum(lease.count for lease in task.leases.active())
        remaining = max(0, task.spec.total - done - leased)
        live = max(len(self.live_workers(task.pool)), self.pool(task.pool).replicas)
        workers = max(1, min(task.spec.parallelism, live))
        return guided_chunk(remaining, workers, floor=chunk_floor(task.seconds_per_item))

    def _offer(self, pool: PoolKey, worker: str, python: str) -> Grant | None:
        tasks = [t for t in self.pool_tasks(pool) if not t.status.phase.finished]
        if not tasks:
            return None
        turn = next(self._turn)  # round robin: no task starves another on a shared pool
        for task in tasks[turn % len(tasks) :] + tasks[: turn % len(tasks)]:
            if task.python and task.python != python:
                self._refuse_python(task, python)
                continue
            if task.stopping_until is not None:
                continue  # ending: its leases are being taken back
            result = self._plan(task, self._chunk(task))
            if self._hold(task, result):
                continue
            self._apply(task, result)
            if not result.create:
                continue
            request = result.create[0]
            attempt = request.attempt + (1 if task.recovered and request.attempt == 0 else 0)
            lease = Lease(
                start=request.start,
                count=request.count,
                attempt=attempt,
                failures=request.failures,
                infra_failures=request.infra_failures,
                worker=worker,
                expires=self.clock() + timedelta(seconds=self.lease_seconds),
                leased_at=self.clock(),
            )
            task.leases.by_name[lease.name] = lease
            task.served_by.add(worker)
            self.pool(pool).last_work = self.clock()
            return Grant(
                lease_id=f"{task.key[1]}/{lease.name}",
                task=task.key[1],
                task_url=task.task_url,
                start=lease.start,
                count=lease.count,
                total=task.spec.total,
                attempt=lease.attempt,
                lease_seconds=self.lease_seconds,
                packages=tuple(task.spec.packages or ()),
                version=task.status.retry_token or "",
                stop_at_failure=_decisive(task.spec, lease.failures),
            )
        return None

    def _refuse_python(self, task: PoolTask, python: str) -> None:
        """Every live worker runs another Python minor: the task can never run here."""
        if any(w.python == task.python for w in self.live_workers(task.pool)):
            return
        now = self.clock()
        message = (
            f"the function was pickled by Python {task.python}, but the workers of pool "
            f"{task.pool[1]} run Python {python}; submit from Python {python} or use a pool "
            f"whose image has Python {task.python}"
        )
        task.status = task.status.model_copy(
            update={
                "phase": Phase.FAILED,
                "message": message,
                "completion_time": rfc3339(now),
                "conditions": set_condition(
                    list(task.status.conditions),
                    "Failed",
                    reason="PythonMismatch",
                    message=message,
                    now=now,
                ),
            }
        )
        task.events.append(Event("Warning", "PythonMismatch", message))
        self._revoke_all(task)
        self.on_change(task.key)


def _decisive(spec: MapTaskSpec, failures: int) -> bool:
    """Whether a user failure in a chunk whose indices failed `failures` times before ends
    the task (the plan retries while failures + 1 <= retries, within the failure budget)."""
    allowed = FailureBudget.of(
        spec.total,
        min_success_ratio=spec.min_success_ratio,
        max_failed_indexes=spec.max_failed_indexes,
    ).allowed
    return decisive_failure(
        allowed_failures=allowed, retries=spec.backoff_limit_per_index, failures=failures
    )
