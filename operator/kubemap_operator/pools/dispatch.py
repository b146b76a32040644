"""The dispatcher: leases the chunks of pool tasks to warm workers, as a small state machine.

Every index of a task is in exactly one place: recorded (succeeded, or failed for good),
pending (never leased, or a retry waiting for its turn), held by one live lease (which may
have one backup copy racing it: speculation), or, once the task has ended, not run. Each event works on one task and one lease:

    lease request  take a chunk from a pending entry; the lease is OFFERED
    heartbeat      renew the worker's leases (LEASED), or say which it lost
    report         the lease is REPORTED; the run engine judges that one attempt
                   (kubemap.core.plan.judge) and says whether the task is over (verdict_of)
    expiry         leases past their time are EXPIRED and judged as lost attempts; this
                   happens in one place, `_expire_due`, at the start of every entry point
    speculation    a lease request that finds no chunk waiting may get a backup copy of a
                   straggling lease instead (pools/speculation.py); the first ok report of
                   the two wins, the other is revoked, and a copy that fails or is lost
                   while its twin runs is set aside: its twin carries on alone

Policy (retries, backoff, failure budget, fail-fast, systematic causes, the phase and its
reason) is the core's; the dispatcher only keeps the state it needs to ask. The MapTask
status is projected from that state when the pool-task controller asks (`sync`), at most
once per FLUSH_SECONDS and at once when the task finishes: no Kubernetes write per item
or per chunk.

State lives in memory and is rebuilt, after a restart, from what outlives the process: the
MapTask status (indices recorded as succeeded or failed, the failure counts of indices in
play) and the store (result objects are write-once, and a re-leased slice of a recovered
task skips indices that have results). A restart loses only the leases in flight, whose
chunks are offered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from kubemap.core.aimd import AimdConfig, Limiters
from kubemap.core.attempts import Attempt, AttemptState, Report
from kubemap.core.plan import (
    Outcome,
    Recorded,
    Retry,
    Rules,
    Verdict,
    judge,
    stopped_failures,
    verdict_of,
)
from kubemap.core.policy import Cause, ExitKind, FailureBudget, decisive_failure
from kubemap.core.ranges import IndexRanges
from kubemap.core.slicing import chunk_floor, guided_chunk
from kubemap.core.speculation import Pace, SpeculationTally
from kubemap.core.status import CONDITION_OF_PHASE, Phase, partition
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus

from kubemap_operator import metrics, taskstats
from kubemap_operator.pools.leases import Lease, Pending
from kubemap_operator.pools.retrystate import counts_in_play, encode, recorded, restored
from kubemap_operator.pools.speculation import pick_straggler
from kubemap_operator.statusfields import clip, rfc3339, set_condition
from kubemap_operator.tasks.observe import parse_time
from kubemap_operator.tasks.planner import rules_of
from kubemap_operator.tasks.plantypes import Event, Limits

FLUSH_SECONDS = 1.0
# A verdict that ends a task (cancelled, failed fast, out of time) while leases run takes them
# back first and waits this long for their workers to stop and report what they kept, so the
# verdict counts the items that finished (lose nothing done); a worker silent that long is
# stuck or gone, and its lease is lost.
STOP_WAIT_SECONDS = 3.0
WORKER_GONE_SECONDS = 60.0  # a worker not heard from this long is no longer counted
KEPT_CAUSES = 64  # infrastructure causes kept for the systematic-failure rule
KEPT_NOTES = 8
SPECULATION_MIN_CAP = 32  # chunks are cut to the backup budget, but never below this
TaskKey = tuple[str, str]  # namespace, MapTask name
PoolKey = tuple[str, str]  # namespace, WorkerPool name
GRANT_LIMITS = AimdConfig(min_rate=1.0, max_rate=1000.0, increase=10.0, decrease=0.5)


@dataclass
class PoolTask:
    key: TaskKey
    uid: str
    pool: PoolKey
    spec: MapTaskSpec
    status: MapTaskStatus  # the last projection (or, once finished, the final status)
    task_url: str
    python: str | None
    recovered: bool  # known to an earlier operator: results may exist that the status lacks
    rules: Rules
    started_at: datetime
    generation: int | None = None
    # -- where every index is (one place each) ----------------------------------------
    succeeded: IndexRanges = field(default_factory=IndexRanges)
    failed: IndexRanges = field(default_factory=IndexRanges)  # for good
    fresh: Pending = field(default_factory=lambda: Pending(IndexRanges(), 0))
    retries: list[Pending] = field(default_factory=list)
    leases: dict[str, Lease] = field(default_factory=dict)  # live leases (offered, leased)
    # successes the status cannot hold yet (too many ranges): judged again with the next
    held: list[tuple[Attempt, IndexRanges]] = field(default_factory=list)
    leased: int = 0  # indices held by live leases (a backup holds none while its twin runs)
    done: int = 0  # indices recorded
    # -- what the core's verdict reads, kept from the attempts judged -----------------
    causes: list[Cause] = field(default_factory=list)
    usage_error: str | None = None
    first_error: tuple[int, str] | None = None
    notes: list[str] = field(default_factory=list)
    too_scattered: bool = False
    infra_note: str | None = None
    ending: Verdict | None = None  # a verdict held while the leases are taken back
    stopping_until: datetime | None = None
    # -- the status flush and what the pool reconcile reads -----------------------------
    flushed: MapTaskStatus | None = None
    flushed_at: datetime | None = None
    events: list[Event] = field(default_factory=list)
    seconds_per_item: float | None = None  # measured from finished leases (moving average)
    pace: Pace = field(default_factory=Pace)  # the median per-item time, for speculation
    speculation: SpeculationTally = field(default_factory=SpeculationTally)

    @property
    def finished(self) -> bool:
        return self.status.phase.finished

    def recorded_all(self) -> IndexRanges:
        return self.succeeded | self.failed

    def in_play(self) -> list[tuple[int, IndexRanges]]:
        """(user failures so far, indices) of every retry waiting and lease running."""
        out = [(p.failures, p.ranges) for p in self.retries if p.failures]
        return out + [(x.failures, x.span) for x in self.leases.values() if x.failures]

    def waiting(self) -> bool:
        """Whether a chunk waits for a worker (fresh work, or a retry due or in backoff)."""
        return bool(self.fresh.ranges) or any(p.ranges for p in self.retries)


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
    # Workers that lease or are about to, as the pool reconcile counts them: every wanted
    # replica of a pool, only the Kueue-admitted ones of a queued pool (a gated worker never
    # runs). Sizes chunks before the workers are all up and asking.
    runnable: int = 0


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
        # Live leases by expiry time; a renewal pushes a new entry and leaves the old one to
        # be skipped when it comes up (lazy deletion): renewing costs O(log n), not a search.
        self._expiry: list[tuple[datetime, int, TaskKey, Lease]] = []
        self._pushes = itertools.count()
        # The operator is stopping: long polls answer at once and no lease is granted (it
        # would die with this process); the workers ask the next operator.
        self.closing = False
        # Grants per second, per pool: lowered when the pool's workers report store throttles
        # (their own limiters slow each worker; this slows the pool as a whole).
        self.grant_limits = Limiters(GRANT_LIMITS)

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
        return any(not t.finished for t in self.pool_tasks(key))

    # -- tasks (called by the pool-task controller) -----------------------------------
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
        self._expire_due()
        now = self.clock()
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
                rules=rules_of(spec, self.limits),
                started_at=now,
                flushed=status,
            )
            self.tasks[key] = task
            self._begin_round(task, status)
            self.on_pool_work(task.pool)
            self.pool(task.pool).wakeup.set()  # idle workers long-polling: here is work
        task.spec, task.rules, task.generation = spec, rules_of(spec, self.limits), generation
        if status.retry_token != task.status.retry_token and not status.phase.finished:
            # A rerun round (kubemap.io/retry) of a task this dispatcher saw finish.
            task.recovered, task.flushed, task.flushed_at = True, status, None
            self._begin_round(task, status)
            self.pool(task.pool).wakeup.set()
        if status.phase.finished and not task.finished:
            task.status = status  # finished elsewhere (an older operator): follow the API
            self._revoke_all(task)
        if not task.finished:
            self._decide(task)  # cancelled, out of time, or a held verdict whose wait is over
        if not task.finished:
            task.status = self._project(task, now)
            self.pool(task.pool).last_work = now
        metrics.QUEUE_DEPTH.labels(*task.pool).set(self.queued(task.pool))
        events, task.events = task.events, []
        if task.flushed is not None and task.status == task.flushed:
            return None, events, None if task.finished else FLUSH_SECONDS
        due = task.flushed_at is None or (now - task.flushed_at).total_seconds() >= FLUSH_SECONDS
        if due or task.finished:
            task.flushed, task.flushed_at = task.status, now
            return task.status, events, None if task.finished else FLUSH_SECONDS
        wait = FLUSH_SECONDS - (now - (task.flushed_at or now)).total_seconds()
        return None, events, max(0.05, wait)

    def forget(self, key: TaskKey) -> None:
        task = self.tasks.pop(key, None)
        if task is not None:
            self._revoke_all(task)  # deleted: its workers stop, their reports get 410
            self.pool(task.pool).wakeup.set()
            metrics.QUEUE_DEPTH.labels(*task.pool).set(self.queued(task.pool))

    def queued(self, pool: PoolKey) -> int:
        """Items of the pool's tasks waiting for a lease: never run, or due for a retry."""
        return sum(
            len(t.fresh.ranges) + sum(len(p.ranges) for p in t.retries)
            for t in self.pool_tasks(pool)
            if not t.finished
        )

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
        asked = asyncio.get_running_loop().time()
        deadline = asked + wait_seconds
        self._nudge(pool, worker)
        while True:
            self.seen(pool, worker, python)
            if self.closing:
                return None
            self._expire_due()
            paced = self.grant_limits.get(pool)
            pace = paced.delay() if paced.limited else 0.0  # only once a throttle lowered it
            grant = None if pace > 0 else self._offer(pool, worker, python)
            if grant is not None:
                paced.reserve()
            was_busy = state.workers[worker].busy
            state.workers[worker].busy = grant is not None
            if was_busy != (grant is not None):  # `kubectl get wp` shows BUSY as it changes
                self.on_pool_work(pool)  # (e.g. idle at once after stopping a cancelled task)
            if grant is not None:
                waited = asyncio.get_running_loop().time() - asked
                metrics.LEASE_GRANT_SECONDS.labels(*pool).observe(waited)
                return grant
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return None
            state.wakeup.clear()
            # Wake on new work, or after a second for retries whose backoff ran out.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wakeup.wait(), timeout=min(1.0, left, pace or 1.0))

    def store_throttles(self, pool: PoolKey, throttles: int) -> None:
        """A worker's report on its last lease: store throttles it waited out (0: none)."""
        limiter = self.grant_limits.get(pool)
        if throttles > 0:
            limiter.throttled()
        else:
            limiter.succeeded()

    def heartbeat(self, pool: PoolKey, worker: str, lease_ids: list[str]) -> list[str]:
        """Renew the worker's leases; return the ids it no longer holds (task gone, expired,
        or taken back)."""
        self._expire_due()
        lost = []
        now = self.clock()
        for lease_id in lease_ids:
            found = self._find(pool, lease_id)
            if found is None or found[0].ending is not None:
                lost.append(lease_id)
                continue
            task, lease = found
            lease.renew(now, self.lease_seconds)
            self._push_expiry(task, lease)
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
        self, pool: PoolKey, lease_id: str, kind: str, report: Report | None, why: str = ""
    ) -> bool:
        """The worker finished (or gave up) its lease; False if the lease is not live (never
        granted, or expired, lost or reported already: a result is counted once)."""
        self._expire_due()
        found = self._find(pool, lease_id)
        if found is None:
            return False
        task, lease = found
        now = self.clock()
        attempt = lease.reported(ExitKind(kind), report, now, why)
        if kind == "ok":
            seconds = (now - lease.leased_at).total_seconds()
            took = seconds / lease.count
            old = task.seconds_per_item
            task.seconds_per_item = took if old is None else 0.7 * old + 0.3 * took
            task.pace.add(seconds, lease.count)
        worker = self.pool(pool).workers.get(lease.worker)
        if worker is not None:
            worker.busy = False
        if lease.twin is not None and kind != "ok":
            self._set_aside(task, lease)  # its twin still runs the slice: no verdict yet
            self.pool(pool).wakeup.set()
            return True
        if lease.twin is not None:
            self._decide_race(task, lease)
        self._close(task, lease)
        self._judge(task, attempt, lease.span)
        self.pool(pool).wakeup.set()
        return True

    # -- transitions ------------------------------------------------------------------
    def _find(self, pool: PoolKey, lease_id: str) -> tuple[PoolTask, Lease] | None:
        """The live lease of that id (offered or leased), with its task."""
        task_name, _, lease_name = lease_id.partition("/")
        task = self.tasks.get((pool[0], task_name))
        if task is None or task.pool != pool:
            return None
        lease = task.leases.get(lease_name)
        return (task, lease) if lease is not None else None

    def _begin_round(self, task: PoolTask, status: MapTaskStatus) -> None:
        """Where each index is, from the status alone (a new task, a restart, a rerun)."""
        self._revoke_all(task)
        task.status = status
        task.started_at = parse_time(status.start_time) or self.clock()
        task.succeeded = IndexRanges.parse(status.succeeded_indexes)
        task.failed = IndexRanges.parse(status.failed_indexes)
        task.done = len(task.succeeded) + len(task.failed - task.succeeded)
        base = status.attempt_base
        task.retries = restored(status, base) if task.recovered else []
        waiting = IndexRanges.from_spans(iv for p in task.retries for iv in p.ranges.intervals)
        # A recovered task's first attempts are numbered above those of the operator before,
        # whose workers may still report leases of the same name.
        attempt = base + (1 if task.recovered else 0)
        every = IndexRanges.span(0, task.spec.total)
        task.fresh = Pending(every - recorded(status) - waiting, attempt)
        task.held, task.causes, task.notes = [], [], []
        task.usage_error, task.first_error, task.too_scattered = None, None, False
        task.infra_note, task.ending, task.stopping_until = None, None, None
        task.speculation = SpeculationTally(  # a new round's budget; the counts go on
            status.speculated, status.speculation_won, status.speculation_wasted
        )

    def _offer(self, pool: PoolKey, worker: str, python: str) -> Grant | None:
        tasks = [t for t in self.pool_tasks(pool) if not t.finished]
        if not tasks:
            return None
        turn = next(self._turn)  # round robin: no task starves another on a shared pool
        for task in tasks[turn % len(tasks) :] + tasks[: turn % len(tasks)]:
            if task.python and task.python != python:
                self._refuse_python(task, python)
                continue
            if task.ending is not None:
                continue  # ending: its leases are being taken back
            grant = self._grant(task, pool, worker)
            if grant is not None:
                return grant
        for task in tasks:  # no chunk waits for this worker: a backup of a straggler?
            if task.ending is None and (not task.python or task.python == python):
                grant = self._speculate(task, pool, worker)
                if grant is not None:
                    return grant
        return None

    def _grant(self, task: PoolTask, pool: PoolKey, worker: str) -> Grant | None:
        """(none) -> OFFERED: the first chunk of the lowest due retry, else of fresh work."""
        if len(task.leases) >= task.spec.parallelism:
            return None
        now = self.clock()
        due = [p for p in task.retries if p.ranges and (p.due is None or p.due <= now)]
        entry = min(due, key=lambda p: p.ranges.intervals[0]) if due else task.fresh
        if not entry.ranges:
            return None
        start, count = entry.take(self._chunk(task))
        if entry is not task.fresh and not entry.ranges:
            task.retries.remove(entry)
        lease = Lease(
            start=start,
            count=count,
            attempt=entry.attempt,
            failures=entry.failures,
            infra_failures=entry.infra_failures,
            worker=worker,
            expires=now + timedelta(seconds=self.lease_seconds),
            leased_at=now,
        )
        task.leased += count
        return self._hand_out(task, pool, lease)

    def _speculate(self, task: PoolTask, pool: PoolKey, worker: str) -> Grant | None:
        """(none) -> OFFERED: a backup copy of a straggling lease, when nothing waits."""
        if task.waiting() or len(task.leases) >= task.spec.parallelism:
            return None
        now = self.clock()
        primary = pick_straggler(
            task.leases.values(),
            rule=task.spec.speculation_rule,
            seconds_per_item=task.pace.seconds_per_item,
            tally=task.speculation,
            total=task.spec.total,
            worker=worker,
            now=now,
        )
        if primary is None:
            return None
        backup = Lease(
            start=primary.start,
            count=primary.count,
            attempt=primary.attempt,
            failures=primary.failures,
            infra_failures=primary.infra_failures,
            worker=worker,
            expires=now + timedelta(seconds=self.lease_seconds),
            leased_at=now,
            backup=True,
            twin=primary.name,
        )
        primary.twin, primary.backed_up = backup.name, True
        task.speculation.speculated += 1
        task.speculation.items += backup.count
        return self._hand_out(task, pool, backup)

    def _hand_out(self, task: PoolTask, pool: PoolKey, lease: Lease) -> Grant:
        assert lease.name not in task.leases, lease.name
        task.leases[lease.name] = lease
        self._push_expiry(task, lease)
        self.pool(pool).last_work = lease.leased_at
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

    def _chunk(self, task: PoolTask) -> int:
        remaining = max(0, task.spec.total - task.done - task.leased)
        live = max(len(self.live_workers(task.pool)), self.pool(task.pool).runnable)
        workers = max(1, min(task.spec.parallelism, live))
        # With speculation, no chunk is larger than a quarter of the backup budget: four
        # stragglers can get a backup, and each is found and outrun sooner (guided
        # self-scheduling's first chunks are 1/workers of the task: a straggler there is
        # noticed only after k x that long, and its backup takes that long again).
        # Not below SPECULATION_MIN_CAP: a small task would pay a lease per item for it.
        rule = task.spec.speculation_rule
        share = max(SPECULATION_MIN_CAP, rule.budget_items(task.spec.total) // 4)
        cap = share if rule.enabled else 100_000
        return guided_chunk(
            remaining, workers, floor=chunk_floor(task.seconds_per_item), cap=min(cap, 100_000)
        )

    def _push_expiry(self, task: PoolTask, lease: Lease) -> None:
        heapq.heappush(self._expiry, (lease.expires, next(self._pushes), task.key, lease))

    def _expire_due(self) -> None:
        """OFFERED | LEASED -> EXPIRED, for every lease past its time: the one place."""
        now = self.clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, _, key, lease = heapq.heappop(self._expiry)
            task = self.tasks.get(key)
            if task is None or task.leases.get(lease.name) is not lease or lease.expires > now:
                continue  # reported, taken back or renewed since: a stale entry
            attempt = lease.expire(now)
            metrics.LEASES_EXPIRED.labels(*task.pool).inc()
            if lease.twin is not None:
                self._set_aside(task, lease)  # its twin still runs the slice
                continue
            self._close(task, lease)
            self._judge(task, attempt, lease.span)
            self.pool(task.pool).wakeup.set()  # its chunk is remaining work again

    def _close(self, task: PoolTask, lease: Lease) -> None:
        """A final lease leaves; with a live twin, the twin holds the indices from now on."""
        del task.leases[lease.name]
        twin = task.leases.get(lease.twin) if lease.twin is not None else None
        if twin is not None:
            twin.twin = None
        else:
            task.leased -= lease.count

    def _set_aside(self, task: PoolTask, lease: Lease) -> None:
        """A copy that failed, expired or gave up while its twin runs: not judged (the twin's
        outcome is the slice's), its run counted as wasted."""
        self._close(task, lease)
        task.speculation.wasted += 1

    def _decide_race(self, task: PoolTask, winner: Lease) -> None:
        """The first ok report of a speculated slice: its twin is revoked (its worker stops
        the function; a late report of it gets 410 and changes nothing)."""
        assert winner.twin is not None
        loser = task.leases[winner.twin]
        loser.revoke()
        self._close(task, loser)
        self._nudge(task.pool, loser.worker)
        task.speculation.wasted += 1
        if winner.backup:
            task.speculation.won += 1

    def _revoke_all(self, task: PoolTask) -> None:
        """OFFERED | LEASED -> LOST, for every lease of a task that is over or gone: their
        workers stop the function (their heartbeat says lost, their report gets 410)."""
        for lease in list(task.leases.values()):
            lease.revoke()
            self._close(task, lease)
            self._nudge(task.pool, lease.worker)

    # -- asking the core ----------------------------------------------------------------
    def _judge(self, task: PoolTask, attempt: Attempt, span: IndexRanges) -> None:
        """Record what one finished attempt says, then ask whether the task is over."""
        if task.finished:
            return
        now = self.clock()
        spans = [(attempt, span), *task.held]
        outcome = judge(
            spans, task.rules, Recorded(task.succeeded, task.failed, task.started_at), now
        )
        task.held = [(a, mine) for a, mine in spans if a.name in outcome.deferred]
        if outcome.failed - task.failed and outcome.notes:
            task.events.append(
                Event("Warning", "IndexFailed", clip("; ".join(outcome.notes), 1000))
            )
        task.succeeded, task.failed = outcome.succeeded, outcome.failed
        task.done = len(task.succeeded) + len(task.failed - task.succeeded)
        task.retries.extend(
            Pending(r.ranges, r.attempt, r.failures, r.infra_failures, r.due)
            for r in outcome.retries
        )
        task.causes = [*task.causes, *outcome.causes][-KEPT_CAUSES:]
        task.usage_error = task.usage_error or outcome.usage_error
        task.first_error = task.first_error or outcome.first_error
        task.notes = [*task.notes, *outcome.notes][:KEPT_NOTES]
        task.too_scattered = task.too_scattered or outcome.too_scattered
        note = next((clip(str(c), 512) for c in reversed(outcome.causes)), None)
        if note is not None and note != task.infra_note:
            # Worth a condition (and an Event) even while the task goes on: `kubectl
            # describe mt` shows it before the task gives up.
            task.infra_note = note
            task.events.append(Event("Warning", "InfrastructureError", clip(note, 1000)))
        self._decide(task)
        # counted once the verdict is in: a task it ended runs none of its retries
        rerun = IndexRanges.from_spans(iv for r in outcome.retries for iv in r.ranges.intervals)
        rerun = IndexRanges() if task.finished or task.ending is not None else rerun
        taskstats.record_attempt(task.key, task.pool[1], attempt, span, outcome.failed, rerun)

    def _verdict(self, task: PoolTask, now: datetime) -> Verdict | None:
        outcome = Outcome(
            succeeded=task.succeeded,
            failed=task.failed,
            notes=task.notes,
            first_error=task.first_error,
            causes=task.causes,
            usage_error=task.usage_error,
            too_scattered=task.too_scattered,
        )
        recorded_all = task.recorded_all()
        found = verdict_of(task.rules, outcome, recorded_all, now, task.started_at, task.failed)
        if found is None or found.phase is Phase.SUCCEEDED:
            return found
        # A stop: its message counts what the status will (the retries that never come).
        stopped = self._stopped(task, now)
        return verdict_of(task.rules, outcome, recorded_all, now, task.started_at, stopped)

    def _stopped(self, task: PoolTask, now: datetime) -> IndexRanges:
        """What counts as failed if the task stops now (kubemap.core.plan.stopped_failures):
        O(retries + leases), asked once, when the task ends."""
        retries = [
            Retry(p.ranges, p.attempt, p.failures, p.infra_failures, p.due or now)
            for p in task.retries
        ]
        running: list[tuple[Attempt, IndexRanges]] = [
            (
                Attempt(x.name, x.start, x.count, x.attempt, x.failures, x.infra_failures,
                        AttemptState.ACTIVE),
                x.span,
            )
            for x in task.leases.values()
            if x.holds
        ]  # fmt: skip
        return stopped_failures(task.failed, retries, running, task.succeeded)

    def _decide(self, task: PoolTask) -> None:
        """The core's verdict, if any: a stop first takes the leases back and waits (up to
        STOP_WAIT_SECONDS) for their reports of what finished; then the task ends."""
        now = self.clock()
        verdict = self._verdict(task, now)
        if verdict is None:
            task.ending, task.stopping_until = None, None
            return
        if task.leases and verdict.phase is not Phase.SUCCEEDED:
            if task.ending is None:
                task.ending = verdict
                task.stopping_until = now + timedelta(seconds=STOP_WAIT_SECONDS)
                for lease in task.leases.values():
                    self._nudge(task.pool, lease.worker)
            assert task.stopping_until is not None
            if now < task.stopping_until:
                return
        self._finish(task, verdict, now)

    def _finish(self, task: PoolTask, verdict: Verdict, now: datetime) -> None:
        if verdict.phase is not Phase.SUCCEEDED:
            task.failed = self._stopped(task, now)  # counted as the verdict's message says
            task.done = len(task.succeeded) + len(task.failed - task.succeeded)
        self._revoke_all(task)
        task.retries, task.fresh = [], Pending(IndexRanges(), 0)
        task.status = self._project(task, now, verdict)
        task.events.append(
            Event(
                "Normal" if verdict.phase is Phase.SUCCEEDED else "Warning",
                verdict.phase.value,
                clip(verdict.message, 1000),
            )
        )
        self.pool(task.pool).tasks_done.add(task.uid)
        self.on_change(task.key)
        self.on_pool_work(task.pool)  # refresh the pool's status: tasks served, idle since

    # -- the status -------------------------------------------------------------------
    def _project(
        self, task: PoolTask, now: datetime, verdict: Verdict | None = None
    ) -> MapTaskStatus:
        """The MapTask status of this state: O(leases + ranges), on a flush, not per event."""
        total = task.spec.total
        active = IndexRanges.from_spans((x.start, x.start + x.count) for x in task.leases.values())
        parts = partition(total, succeeded=task.succeeded, failed=task.failed, active=active)
        old = task.status
        conditions = list(old.conditions)
        if task.infra_note is not None:
            conditions = set_condition(
                conditions, "InfrastructureTrouble", reason="InfrastructureError",
                message=task.infra_note, now=now,
            )  # fmt: skip
        update: dict[str, object] = {
            "total": total,
            "start_time": old.start_time or rfc3339(task.started_at),
            "observed_generation": task.generation or old.observed_generation,
            "succeeded": len(parts.succeeded),
            "failed": len(parts.failed),
            "active": len(task.leases),
            "not_run": len(parts.not_run),
            "succeeded_indexes": str(task.succeeded),
            "failed_indexes": str(task.failed),
            "phase": Phase.RUNNING,
            "message": None,
            "conditions": conditions,
            "pool_failures": encode(counts_in_play(task.in_play(), task.recorded_all())),
            "speculated": task.speculation.speculated,
            "speculation_won": task.speculation.won,
            "speculation_wasted": task.speculation.wasted,
        }
        if verdict is not None:
            update |= {
                "phase": verdict.phase,
                "message": clip(verdict.message),
                "completion_time": rfc3339(now),
                "pool_failures": None,
                "conditions": set_condition(
                    conditions, CONDITION_OF_PHASE[verdict.phase],
                    reason=verdict.reason.value, message=verdict.message, now=now,
                ),
            }  # fmt: skip
        return old.model_copy(update=update)

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
        task.status = self._project(task, now).model_copy(
            update={
                "phase": Phase.FAILED,
                "message": message,
                "completion_time": rfc3339(now),
                "pool_failures": None,
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
    the task (the core retries while failures + 1 <= retries, within the failure budget)."""
    allowed = FailureBudget.of(
        spec.total,
        min_success_ratio=spec.min_success_ratio,
        max_failed_indexes=spec.max_failed_indexes,
    ).allowed
    return decisive_failure(
        allowed_failures=allowed, retries=spec.backoff_limit_per_index, failures=failures
    )
