"""Cleaning up after the planner's verdicts: which pods lose their finalizer, which go,
and what a finished task still does (stop pods, let go of finalizers, wait for its TTL)."""

from __future__ import annotations

from datetime import datetime, timedelta

from kubemap.core.ranges import IndexRanges
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus

from kubemap_operator.statusfields import within
from kubemap_operator.tasks.observe import ObservedPod, PodState, parse_time
from kubemap_operator.tasks.plantypes import Limits, Plan


def cleanup(
    pods: list[ObservedPod],
    spans: list[tuple[ObservedPod, IndexRanges]],
    recorded: IndexRanges,
    kept_records: set[str],
    limits: Limits,
    *,
    stop_active: bool = False,
) -> tuple[list[str], list[str]]:
    """Finished pods whose outcome is recorded lose their finalizer; succeeded ones go,
    failed ones stay for their logs up to limits.failed_pods_kept (newest kept)."""
    release: list[str] = []
    delete: list[str] = []
    failed_done: list[ObservedPod] = []
    for pod, mine in spans:
        if pod.state is PodState.ACTIVE or (stop_active and pod.stuck):
            if stop_active and not pod.deleting:
                delete.append(pod.name)
            elif stop_active and pod.has_finalizer:
                release.append(pod.name)
            continue
        if pod.name in kept_records or (mine - within(recorded, pod.start, pod.start + pod.count)):
            continue
        if (pod.state is PodState.SUCCEEDED or pod.stuck) and not pod.deleting:
            delete.append(pod.name)  # a stuck pod (image, Secret) has no logs worth keeping
        elif pod.deleting:
            if pod.has_finalizer:
                release.append(pod.name)
        else:
            failed_done.append(pod)
            if pod.has_finalizer:
                release.append(pod.name)
    failed_done.sort(
        key=lambda p: p.finished_at.timestamp() if p.finished_at else 0.0, reverse=True
    )
    delete.extend(p.name for p in failed_done[limits.failed_pods_kept :])
    release = [n for n in release if n not in delete]
    return release, delete


def after_finish(
    spec: MapTaskSpec,
    status: MapTaskStatus,
    pods: list[ObservedPod],
    now: datetime,
    limits: Limits,
) -> Plan:
    """A finished task stops its pods, lets go of every finalizer and waits for its TTL."""
    spans = [(p, IndexRanges()) for p in pods]
    release, delete = cleanup(pods, spans, IndexRanges(), set(), limits, stop_active=True)
    # Finished pods that are not deleted still lose the finalizer: nothing is left to record.
    release = sorted(
        {*release, *(p.name for p in pods if p.has_finalizer and p.name not in delete)}
    )
    requeue: float | None = None
    delete_task = False
    if spec.ttl_seconds_after_finished is not None:
        finished_at = parse_time(status.completion_time) or now
        left = (
            finished_at + timedelta(seconds=spec.ttl_seconds_after_finished) - now
        ).total_seconds()
        if left <= 0:
            delete_task = True
        else:
            requeue = left
    status = status.model_copy(
        update={
            "active": sum(1 for p in pods if p.state is PodState.ACTIVE and p.name not in delete),
            "queued": 0,
        }
    )
    return Plan(
        status=status,
        release=tuple(release),
        delete=tuple(delete),
        requeue_after=requeue,
        delete_task=delete_task,
    )
