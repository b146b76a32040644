"""The listing step of a spec.files task's reconcile: run the listing pod (built in
kubemap_operator.tasks.builder), read its outcome, record the count in the status.

The count is written to the status before the listing pod is deleted, so a crash in
between lists nothing twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubemap.contract import ANNOTATION_ATTEMPT
from kubemap.core.status import Phase, Reason
from kubemap.resources import filemode as filetask
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus

from kubemap_operator.kubeapi import TaskApi
from kubemap_operator.settings import Settings
from kubemap_operator.statusfields import clip, rfc3339, set_condition
from kubemap_operator.tasks.builder import (
    LISTER_ROLE,
    ROLE_LABEL,
    TaskRef,
    build_lister_pod,
    lister_name,
    store_url,
)

LISTING_ATTEMPTS = 3  # a listing failed by the store or the node is tried this many times


def listed_spec(spec: MapTaskSpec, status: MapTaskStatus) -> MapTaskSpec | None:
    """The spec with count = the files to run, once the listing finished; None before."""
    if status.listed is None:
        return None
    return spec.model_copy(update={"count": status.listed - (status.skipped or 0)})


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        found = (cs.get("state") or {}).get("terminated")
        if found:
            return dict(found)
    return {}


def listing_outcome(
    pod: dict[str, Any] | None, status: MapTaskStatus, now: datetime
) -> tuple[str, dict[str, Any] | None]:
    """What to do about the listing: ("create", None), ("wait", None), or ("record", patch)
    with the status patch that records the count (or fails the task). Pure."""
    if pod is None:
        return "create", None
    phase = (pod.get("status") or {}).get("phase")
    if phase not in ("Succeeded", "Failed"):
        return "wait", None
    term = _terminated(pod)
    counts = filetask.parse_listing_line(term.get("message")) if phase == "Succeeded" else None
    moment = rfc3339(now)
    if counts is None and term.get("exitCode") != 5 and attempt_of(pod) + 1 < LISTING_ATTEMPTS:
        return "retry", None  # the store or the node failed it: list again (a usage error stays)
    if counts is not None:
        listed, skipped = counts
        return "record", {
            "listed": listed,
            "skipped": skipped,
            "total": listed - skipped,
            "startTime": status.start_time or moment,
        }
    code = term.get("exitCode")
    detail = " ".join(str(term.get("message") or "no message").split())
    reason = Reason.USAGE if code == 5 else Reason.INFRASTRUCTURE
    message = (
        f"listing spec.files failed (pod {pod['metadata']['name']}, exit code {code}): {detail}; "
        "check spec.files.input and the store credentials, then apply the MapTask again"
    )
    return "record", failed_patch(status, message, reason, now)


def failed_patch(
    status: MapTaskStatus, message: str, reason: Reason, now: datetime
) -> dict[str, Any]:
    message = clip(message)
    moment = rfc3339(now)
    conditions = set_condition(
        list(status.conditions), "Failed", reason=reason.value, message=message, now=now
    )
    return {
        "phase": Phase.FAILED.value,
        "message": message,
        "startTime": status.start_time or moment,
        "completionTime": moment,
        "conditions": [c.to_wire() for c in conditions],
    }


def attempt_of(pod: dict[str, Any]) -> int:
    try:
        return int(((pod.get("metadata") or {}).get("annotations") or {})[ANNOTATION_ATTEMPT])
    except (KeyError, ValueError, TypeError):
        return 0


def lister_of(pods: list[dict[str, Any]], task_name: str) -> dict[str, Any] | None:
    """The task's latest listing pod, if any."""
    mine = [
        p
        for p in pods
        if (p.get("metadata") or {}).get("labels", {}).get(ROLE_LABEL) == LISTER_ROLE
    ]
    return max(mine, key=attempt_of, default=None)


async def reconcile_listing(
    api: TaskApi,
    settings: Settings,
    task: TaskRef,
    spec: MapTaskSpec,
    status: MapTaskStatus,
    pods: list[dict[str, Any]],
    now: datetime,
    logger: Any,
) -> tuple[MapTaskSpec, MapTaskStatus] | None:
    """The spec to plan with (count = the files to run) and the status, or None while the
    listing runs (or after it failed the task). The count is written to the status before
    the listing pod is deleted, so a crash in between lists nothing twice."""
    listed = listed_spec(spec, status)
    if listed is not None:
        return listed, status
    if status.phase.finished:
        return None
    pod = lister_of(pods, task.name)
    action, patch = listing_outcome(pod, status, now)
    if action == "wait":
        return None
    if action == "retry" and pod is not None:
        attempt = attempt_of(pod) + 1
        logger.warning(
            f"listing pod {pod['metadata']['name']} failed; listing again ({attempt + 1} of {LISTING_ATTEMPTS})"
        )
        await api.delete_pod(task.namespace, str(pod["metadata"]["name"]))
        await api.create_pod(task.namespace, build_lister_pod(task, spec, settings, attempt))
        return None
    if action == "create":
        if store_url(spec, settings):
            await api.create_pod(task.namespace, build_lister_pod(task, spec, settings))
            logger.info(f"listing spec.files in pod {lister_name(task.name)}")
            return None
        patch = failed_patch(
            status,
            "spec.files needs a store for its listing: set spec.store.url or the operator's "
            "default store (chart value s3.defaultStore)",
            Reason.INVALID_SPEC,
            now,
        )
    assert patch is not None
    await api.patch_status(task.namespace, task.name, patch)
    if "listed" not in patch:
        logger.error(patch["message"])
        return None
    logger.info(
        f"spec.files: {patch['listed']} file(s) matched, {patch['skipped']} already processed, "
        f"{patch['total']} to run"
    )
    if pod is not None:
        await api.delete_pod(task.namespace, str(pod["metadata"]["name"]))
    merged = status.model_copy(
        update={
            "listed": patch["listed"],
            "skipped": patch["skipped"],
            "total": patch["total"],
            "start_time": patch["startTime"],
        }
    )
    again = listed_spec(spec, merged)
    assert again is not None
    return again, merged


__all__ = ["listed_spec", "lister_of", "listing_outcome", "reconcile_listing"]
