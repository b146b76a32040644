"""Speculative backup pods for straggling slices (pure, no I/O; kubemap.core.speculation).

A backup pod runs the same slice and attempt as the pod it races (named `...s`, annotation
kubemap.io/backup). Two steps around the core's plan:

* `settle` before it: of two pods of one slice, the first to succeed is the one the core
  sees; the other is deleted (it loses the race). A copy that failed while its twin still
  runs is set aside (deleted, not judged: the twin's outcome is the slice's). Never both
  judged: one slice, one outcome.
* `backups` after it: once every index not recorded is held by a running pod (nothing
  waits), pods running longer than the rule allows get a backup, within the budget
  (spec.speculation.budget x total items, counted as status.speculated x itemsPerPod) and
  the free parallelism. Function mode only: its results are write-once, so the loser's
  write changes nothing; a container's own outputs have no such guarantee.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from kubemap.core.attempts import SliceRequest
from kubemap.core.ranges import IndexRanges
from kubemap.core.speculation import Pace
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Mode

from kubemap_operator.tasks.observe import ObservedPod, PodState


@dataclass(frozen=True)
class Settled:
    pods: list[ObservedPod]  # what the core plans with: one outcome per slice
    delete: tuple[str, ...]  # losers and set-aside copies
    won: int  # backups that succeeded first, newly seen
    wasted: int  # copies thrown away, newly seen


def speculates(spec: MapTaskSpec) -> bool:
    return (
        spec.speculation_rule.enabled
        and spec.mode is Mode.FUNCTION
        and spec.files is None
        and spec.pool is None
    )


def settle(pods: list[ObservedPod]) -> Settled:
    pairs: dict[tuple[int, int, int], list[ObservedPod]] = defaultdict(list)
    for pod in pods:
        pairs[(pod.start, pod.count, pod.attempt)].append(pod)
    out: list[ObservedPod] = []
    delete: list[str] = []
    won = wasted = 0
    for group in pairs.values():
        if len(group) == 1:
            out.extend(group)
            continue
        winner = next((p for p in group if p.state is PodState.SUCCEEDED), None)
        running = [p for p in group if p.state is PodState.ACTIVE]
        if winner is not None:
            keep = [winner]
        elif running:  # a copy that failed while its twin runs: set aside
            keep = running
        else:  # both ended without success: judge one (the primary), as without a backup
            keep = [min(group, key=lambda p: p.backup)]
        out.extend(keep)
        for pod in group:
            if pod in keep:
                continue
            if not pod.deleting:
                delete.append(pod.name)
                wasted += 1
                if winner is not None and winner.backup and pod.state is PodState.ACTIVE:
                    won += 1
            elif pod.has_finalizer:
                delete.append(pod.name)  # gone already: only its finalizer to remove
    return Settled(out, tuple(delete), won, wasted)


def pod_seconds(pod: ObservedPod) -> float | None:
    """From creation to the end of its container: what a slice costs, start-up included."""
    if pod.created_at is None or pod.finished_at is None:
        return None
    return max(0.0, (pod.finished_at - pod.created_at).total_seconds())


def observe_pace(pace: Pace, seen: set[str], pods: list[ObservedPod]) -> None:
    """Add the times of succeeded pods not counted yet (by name) to the task's pace."""
    for pod in pods:
        if pod.state is PodState.SUCCEEDED and pod.name not in seen:
            seconds = pod_seconds(pod)
            if seconds is not None:
                seen.add(pod.name)
                pace.add(seconds, pod.count)


def raced_slices(pods: list[ObservedPod]) -> set[tuple[int, int]]:
    """(start, attempt) of the slices that have a backup pod: one backup per slice."""
    return {(p.start, p.attempt) for p in pods if p.backup}


def recheck_after(
    spec: MapTaskSpec,
    pods: list[ObservedPod],
    seconds_per_item: float | None,
    now: datetime,
    raced: set[tuple[int, int]],
) -> float | None:
    """Seconds until the next running pod becomes a straggler (at least 1): a lone slow pod
    sends no event when it crosses the line, so the task is looked at again then."""
    if not speculates(spec) or seconds_per_item is None:
        return None
    waits = []
    for pod in pods:
        if pod.state is not PodState.ACTIVE or pod.backup or pod.created_at is None:
            continue
        if (pod.start, pod.attempt) in raced:
            continue
        after = spec.speculation_rule.overdue_after(pod.count, seconds_per_item)
        if after is not None:
            waits.append(after - (now - pod.created_at).total_seconds())
    return max(1.0, min(waits)) if waits else None


def backups(
    spec: MapTaskSpec,
    status: MapTaskStatus,
    pods: list[ObservedPod],
    seconds_per_item: float | None,
    now: datetime,
    raced: set[tuple[int, int]],
) -> tuple[SliceRequest, ...]:
    """Backup pods to start now (see the module's docstring); `pods` as settled, `raced`
    the (start, attempt) of every slice that has a backup pod (settled away or not)."""
    rule = spec.speculation_rule
    if not speculates(spec) or seconds_per_item is None:
        return ()
    active = [p for p in pods if p.state is PodState.ACTIVE]
    held = IndexRanges.from_spans((p.start, p.start + p.count) for p in active)
    recorded = IndexRanges.parse(status.succeeded_indexes) | IndexRanges.parse(
        status.failed_indexes
    )
    if IndexRanges.span(0, spec.total) - recorded - held:
        return ()  # something waits (never started, or a retry): it goes first
    room = spec.parallelism - len(active)
    used = status.speculated * spec.items_per_pod
    out: list[SliceRequest] = []
    late = sorted(
        (p for p in active if p.created_at is not None),
        key=lambda p: p.created_at or now,
    )
    for pod in late:
        if len(out) >= room:
            break
        if pod.backup or (pod.start, pod.attempt) in raced or pod.deleting or not pod.launched:
            continue
        running = (now - (pod.created_at or now)).total_seconds()
        if not rule.is_straggler(running, pod.count, seconds_per_item):
            continue
        if used + pod.count > rule.budget_items(spec.total):
            continue
        used += pod.count
        out.append(
            SliceRequest(
                pod.start, pod.count, pod.attempt, pod.failures, pod.infra_failures, backup=True
            )
        )
    return tuple(out)
