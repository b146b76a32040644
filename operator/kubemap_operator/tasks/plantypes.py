"""What the planner returns: the plan and its parts (plain frozen data)."""

from __future__ import annotations

from dataclasses import dataclass

from kubemap.core.attempts import SliceRequest
from kubemap.core.policy import BACKOFF_BASE_SECONDS
from kubemap.resources.maptask import MapTaskStatus

from kubemap_operator.statusfields import MAX_FAILED_RANGES, MAX_SUCCEEDED_RANGES


@dataclass(frozen=True)
class Limits:
    backoff_base_seconds: float = BACKOFF_BASE_SECONDS
    failed_pods_kept: int = 20
    max_succeeded_ranges: int = MAX_SUCCEEDED_RANGES
    max_failed_ranges: int = MAX_FAILED_RANGES


# A pod to create: the core plan's slice request (start, count and attempt metadata).
PodRequest = SliceRequest


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    status: MapTaskStatus
    create: tuple[PodRequest, ...] = ()
    release: tuple[str, ...] = ()  # remove the tracking finalizer, keep the pod
    delete: tuple[str, ...] = ()  # remove the finalizer, then delete the pod
    # Delete the pod but keep its finalizer: a stopping task records what the pod did
    # before it ended (its results are in the store), then lets it go.
    stop: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None  # seconds until a retry or the TTL is due
    delete_task: bool = False


DEFAULT_LIMITS = Limits()
