"""Rerunning what has no result, asked for with the MapTask annotation kubemap.io/retry.

    kubectl annotate mt NAME kubemap.io/retry=2 --overwrite        # any new value
    kubectl patch mt NAME --type merge -p '{"spec":{"suspend":false}}'   # if it was cancelled

A new token on a finished task starts a new round: the recorded successes stay, the
recorded failures and the deadline are reset, and attempts are numbered from
status.attemptBase, above every pod of earlier rounds. Those pods are no part of the round's
plan, so the core plan (kubemap.core.plan) sees fresh attempts with fresh retry budgets and
starts exactly the indices without a result; never a succeeded one. A pod of an earlier
round that still finishes writes a write-once result: harmless, and counted by nobody.
Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from kubemap.core.attempts import SliceRequest
from kubemap.core.status import CONDITION_OF_PHASE, Phase
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus

from kubemap_operator.statusfields import rfc3339, set_condition
from kubemap_operator.tasks.observe import ObservedPod
from kubemap_operator.tasks.plantypes import Event

CONDITION = "Retried"


def honour(
    spec: MapTaskSpec,
    status: MapTaskStatus,
    pods: list[ObservedPod],
    token: str | None,
    now: datetime,
) -> tuple[MapTaskStatus, Event | None]:
    """The status a retry token leads to, and the event that says so (None: no new token)."""
    if not token or token == status.retry_token:
        return status, None
    if not status.phase.finished:
        return status.model_copy(update={"retry_token": token}), Event(
            "Warning", "RetryIgnored", f"kubemap.io/retry={token}: the task is still running"
        )
    if spec.suspend:  # not recorded: the token applies once spec.suspend is false
        return status, Event(
            "Warning",
            "RetryWaiting",
            f"kubemap.io/retry={token}: spec.suspend is true; set it to false to rerun",
        )
    missing = status.total - status.succeeded
    if missing <= 0:
        return status.model_copy(update={"retry_token": token}), Event(
            "Normal", "RetryNothing", f"kubemap.io/retry={token}: every index has a result"
        )
    finished_kinds = set(CONDITION_OF_PHASE.values())
    message = (
        f"kubemap.io/retry={token}: rerunning the {missing} indices without a result; "
        f"the {status.succeeded} that succeeded stay"
    )
    conditions = [c for c in status.conditions if c.type not in finished_kinds]
    base = max([status.attempt_base, *(p.attempt + 1 for p in pods)])
    reset = status.model_copy(
        update={
            "phase": Phase.PENDING,
            "failed": 0,
            "failed_indexes": "",
            "not_run": missing,
            "message": None,
            "completion_time": None,
            "start_time": rfc3339(now),
            "retry_token": token,
            "attempt_base": base,
            "conditions": set_condition(
                conditions, CONDITION, reason="RetryRequested", message=message, now=now
            ),
        }
    )
    return reset, Event("Normal", "Retrying", message)


def this_round(status: MapTaskStatus, pods: list[ObservedPod]) -> list[ObservedPod]:
    """The pods of the current round: attempts numbered from status.attemptBase."""
    return [p for p in pods if p.attempt >= status.attempt_base]


def numbered(status: MapTaskStatus, requests: tuple[SliceRequest, ...]) -> tuple[SliceRequest, ...]:
    """A round's first attempts are numbered attemptBase, so no pod name is reused."""
    base = status.attempt_base
    return tuple(r if r.attempt >= base else replace(r, attempt=base) for r in requests)
