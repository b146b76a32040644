"""The operator's adapter over the run engine: plan(spec, status, pods, now) -> Plan.

The decisions (what to record, what to start, the verdict) are `kubemap.core.plan.plan`'s,
the same function the local backend and warm pools execute. This module only translates:
the MapTask spec into the core's Rules, the status into what is Recorded, pods into
attempts (`observe.ObservedPod` is one), and the core's Decision back into a status, the
pods to create, the finalizers to release and the pods to delete. No I/O here.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from kubemap.core.plan import Decision, Recorded, Rules, Verdict
from kubemap.core.plan import plan as core_plan
from kubemap.core.ranges import IndexRanges
from kubemap.core.status import (
    CONDITION_OF_PHASE,
    Phase,
    Reason,
    outcome_message,
    partition,
    why_of,
)
from kubemap.resources.kueue import waiting_message
from kubemap.resources.maptask import Condition, MapTaskSpec, MapTaskStatus

from kubemap_operator.statusfields import clip, rfc3339, set_condition
from kubemap_operator.tasks import rerun, speculation
from kubemap_operator.tasks.finishing import after_finish, cleanup
from kubemap_operator.tasks.observe import ObservedPod, PodState, parse_time
from kubemap_operator.tasks.plantypes import DEFAULT_LIMITS, Event, Limits, Plan, PodRequest

__all__ = ["STOPPING", "Event", "Limits", "Plan", "PodRequest", "plan", "rules_of"]

# A task whose verdict came while pods ran first stops them (condition Stopping: the
# verdict's reason and why), records what they finished, then ends with those counts: a
# pod that wrote its result just before the verdict is counted, not found later in the
# store beside a status that says "not run". Bounded: a pod that does not end within
# STOP_WAIT_SECONDS (its node is gone) is not waited for.
STOPPING = "Stopping"
STOP_WAIT_SECONDS = 60.0


def rules_of(spec: MapTaskSpec, limits: Limits = DEFAULT_LIMITS) -> Rules:
    return Rules(
        total=spec.total,
        items_per_slice=spec.items_per_pod,
        parallelism=spec.parallelism,
        retries=spec.backoff_limit_per_index,
        min_success_ratio=spec.min_success_ratio,
        max_failed_indexes=spec.max_failed_indexes,
        deadline_seconds=spec.active_deadline_seconds,
        cancelled=spec.suspend,
        backoff_base_seconds=limits.backoff_base_seconds,
        max_succeeded_ranges=limits.max_succeeded_ranges,
        max_failed_ranges=limits.max_failed_ranges,
    )


def _upd(status: MapTaskStatus, **changes: object) -> MapTaskStatus:
    return status.model_copy(update=changes)


def _events(decision: Decision, old_failed: IndexRanges) -> list[Event]:
    events: list[Event] = []
    if decision.failed - old_failed and decision.failure_notes:
        events.append(
            Event("Warning", "IndexFailed", clip("; ".join(decision.failure_notes), 1000))
        )
    return events


def _start_stopping(
    verdict: Verdict, status: MapTaskStatus, events: list[Event], now: datetime
) -> Condition | None:
    """The Stopping condition of a verdict that stops the task (None for a success)."""
    if verdict.phase is Phase.SUCCEEDED:
        return None
    why = why_of(verdict.message)
    events.append(Event("Warning", STOPPING, clip(f"stopping: {why}", 1000)))
    conditions = set_condition(
        list(status.conditions), STOPPING, reason=verdict.reason.value, message=why, now=now
    )
    return conditions[-1]


def plan(
    spec: MapTaskSpec,
    status: MapTaskStatus,
    pods: list[ObservedPod],
    now: datetime,
    *,
    generation: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    retry_token: str | None = None,
    stop_first: bool = False,
    seconds_per_item: float | None = None,
) -> Plan:
    """The plan for this reconcile; `retry_token` is the kubemap.io/retry annotation (see
    kubemap_operator.tasks.rerun: a new token on a finished task reruns what has no result).
    stop_first: a verdict that stops the task while pods run stops them first (STOPPING).
    seconds_per_item: the task's measured pace, for backup pods of stragglers (None: none
    yet); races between a pod and its backup are settled before the core plans."""
    status, retry_event = rerun.honour(spec, status, pods, retry_token, now)
    earlier = [p.name for p in pods if p.attempt < status.attempt_base and p.has_finalizer]
    this_round = rerun.this_round(status, pods)
    settled = speculation.settle(this_round)
    result = _plan(
        spec,
        status,
        settled.pods,
        now,
        generation=generation,
        limits=limits,
        stop_first=stop_first,
    )
    out = result.status
    if settled.won or settled.wasted:
        out = _upd(
            out,
            speculation_won=out.speculation_won + settled.won,
            speculation_wasted=out.speculation_wasted + settled.wasted,
        )
    create = rerun.numbered(result.status, result.create)
    requeue = result.requeue_after
    if out.phase is Phase.RUNNING and not create and not result.stop:
        raced = speculation.raced_slices(this_round)
        create = speculation.backups(spec, out, settled.pods, seconds_per_item, now, raced)
        check = speculation.recheck_after(spec, settled.pods, seconds_per_item, now, raced)
        if check is not None:
            requeue = check if requeue is None else min(requeue, check)
    return replace(
        result,
        status=out,
        create=create,
        requeue_after=requeue,
        release=tuple(
            n for n in dict.fromkeys((*result.release, *earlier)) if n not in settled.delete
        ),
        delete=tuple(dict.fromkeys((*result.delete, *settled.delete))),
        events=(retry_event, *result.events) if retry_event else result.events,
    )


def _plan(
    spec: MapTaskSpec,
    status: MapTaskStatus,
    pods: list[ObservedPod],
    now: datetime,
    *,
    generation: int | None,
    limits: Limits,
    stop_first: bool = False,
) -> Plan:
    total = spec.total
    base = _upd(
        status,
        total=total,
        start_time=status.start_time or rfc3339(now),
        observed_generation=generation if generation is not None else status.observed_generation,
    )
    if status.phase.finished:
        return after_finish(spec, base, pods, now, limits)

    old_failed = IndexRanges.parse(status.failed_indexes)
    recorded = Recorded(
        succeeded=IndexRanges.parse(status.succeeded_indexes),
        failed=old_failed,
        started_at=parse_time(base.start_time) or now,
    )
    decision = core_plan(rules_of(spec, limits), recorded, list(pods), now)
    events = _events(decision, old_failed)
    active_pods = [p for p in pods if p.state is PodState.ACTIVE]
    # The one split of the indices (kubemap.core.status.partition) that every surface uses;
    # `active` on the MapTask counts pods, the indices they run are neither failed nor not run.
    parts = partition(
        total,
        succeeded=decision.succeeded,
        failed=decision.failed,
        active=IndexRanges.from_spans((p.start, p.start + p.count) for p in active_pods),
    )
    status_out = _upd(
        base,
        succeeded=len(parts.succeeded),
        failed=len(parts.failed),
        active=len(active_pods),
        not_run=len(parts.not_run),
        succeeded_indexes=str(decision.succeeded),
        failed_indexes=str(decision.failed),
    )
    if decision.infra_note and any(p.state is PodState.FAILED for p in pods):
        # An infrastructure cause is worth a condition (and, when new, an Event) even while
        # the task goes on: `kubectl describe mt` shows it before the task gives up.
        before = next(
            (c.message for c in status.conditions if c.type == "InfrastructureTrouble"), None
        )
        if before != clip(decision.infra_note, 512):
            events.append(Event("Warning", "InfrastructureError", clip(decision.infra_note, 1000)))
        status_out = _upd(
            status_out,
            conditions=set_condition(
                list(status_out.conditions),
                "InfrastructureTrouble",
                reason="InfrastructureError",
                message=decision.infra_note,
                now=now,
            ),
        )
    verdict = decision.verdict
    stopping = next((c for c in status.conditions if c.type == STOPPING), None)
    # Only pods that started can still write results: pending ones are deleted, not awaited.
    running = [p for p in pods if p.state is PodState.ACTIVE and p.launched]
    if stopping is None and stop_first and running and verdict is not None:
        stopping = _start_stopping(verdict, status_out, events, now)
        if stopping is not None:
            status_out = _upd(
                status_out,
                conditions=[*(c for c in status_out.conditions if c.type != STOPPING), stopping],
            )
    if stopping is not None and not (verdict is not None and verdict.phase is Phase.SUCCEEDED):
        since = parse_time(stopping.last_transition_time) or now
        waited = (now - since).total_seconds()
        reason = Reason.parse(stopping.reason) or Reason.FAILED_INDEXES
        stopped = decision.stopped
        if running and waited < STOP_WAIT_SECONDS:
            return Plan(
                status=_upd(
                    status_out,
                    phase=Phase.RUNNING,
                    failed=len(stopped - decision.succeeded),
                    not_run=len(
                        partition(
                            total,
                            succeeded=decision.succeeded,
                            failed=stopped,
                            active=IndexRanges.from_spans(
                                (p.start, p.start + p.count) for p in running
                            ),
                        ).not_run
                    ),
                    failed_indexes=str(stopped),
                ),
                stop=tuple(p.name for p in running if not p.deleting),
                delete=tuple(
                    p.name
                    for p in pods
                    if p.state is PodState.ACTIVE and not p.launched and not p.deleting
                ),
                events=tuple(events),
                requeue_after=min(2.0, STOP_WAIT_SECONDS - waited),
            )
        phase = Phase.CANCELLED if reason is Reason.CANCELLED else Phase.FAILED
        counted = partition(total, succeeded=decision.succeeded, failed=stopped)
        verdict = Verdict(
            phase,
            reason,
            outcome_message(
                phase,
                total=total,
                succeeded=len(counted.succeeded),
                failed=len(counted.failed),
                why=stopping.message or "",
            ),
        )
        status_out = _upd(
            status_out,
            succeeded=len(counted.succeeded),
            failed=len(counted.failed),
            failed_indexes=str(counted.failed),
            conditions=[c for c in status_out.conditions if c.type != STOPPING],
        )
    if verdict is not None:
        kind = CONDITION_OF_PHASE[verdict.phase]
        status_out = _upd(
            status_out,
            phase=verdict.phase,
            message=clip(verdict.message),
            completion_time=rfc3339(now),
            # a stopped task's running attempts are stopped: their indices were not run
            not_run=len(
                partition(
                    total,
                    succeeded=IndexRanges.parse(status_out.succeeded_indexes),
                    failed=IndexRanges.parse(status_out.failed_indexes),
                ).not_run
            ),
            conditions=set_condition(
                list(status_out.conditions),
                kind,
                reason=verdict.reason.value,
                message=verdict.message,
                now=now,
            ),
        )
        events.append(
            Event(
                "Normal" if verdict.phase is Phase.SUCCEEDED else "Warning",
                verdict.phase.value,
                clip(verdict.message, 1000),
            )
        )
        finished = after_finish(spec, status_out, pods, now, limits)
        return replace(finished, events=tuple(events) + finished.events)

    release, delete = cleanup(
        pods,
        [(p, mine) for p, mine in decision.spans if isinstance(p, ObservedPod)],
        decision.succeeded | decision.failed,
        set(decision.kept),
        limits,
    )
    queued = [p for p in active_pods if p.queued]
    status_out = _upd(
        status_out,
        phase=Phase.RUNNING if (pods or decision.start) else Phase.PENDING,
        queued=len(queued),
        # Kueue holds pods back: say so, or a task whose pods wait looks stuck.
        message=waiting_message(queued[0].queued or "", len(queued)) if queued else None,
    )
    return Plan(
        status=status_out,
        create=decision.start,
        release=tuple(release),
        delete=tuple(delete),
        events=tuple(events),
        requeue_after=decision.next_due,
    )
