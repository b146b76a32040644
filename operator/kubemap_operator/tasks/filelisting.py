"""spec.files: the listing pod, the per-file pod layout, and the listing step of a reconcile.

Design in kubemap.task.filemode. Why init containers and not a wrapper: the user's image is any
image (busybox, ImageMagick...), with no Python to run a kubemap wrapper in, so the kubemap
image does the store work in its own containers around it, sharing an emptyDir:

    init  kubemap-fetch   (kubemap image)  the item's file -> /kubemap/input/file
    init  worker          (user's image)   the user's command, unchanged
    main  kubemap-upload  (kubemap image)  /kubemap/output/** -> <output>/<name>/, once

Init containers run in order and each must succeed, so the upload runs only after the
program succeeded, and a failing program fails the pod with its own exit code. Every
container gets the restricted security context of the operator's pod defaults.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from kubemap.contract import ANNOTATION_ATTEMPT, LABEL_TASK, name_digest, task_label
from kubemap.core.status import Phase, Reason
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus
from kubemap.task import filemode as filetask

from kubemap_operator.kubeapi import TaskApi
from kubemap_operator.settings import Settings
from kubemap_operator.statusfields import clip, rfc3339, set_condition
from kubemap_operator.tasks.builder import (
    MANAGED_BY,
    MAX_NAME,
    TaskRef,
    _env,
    _store_env,
)

STORE_ENV = frozenset(
    {
        "KUBEMAP_TASK_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
)
LISTING_ATTEMPTS = 3  # a listing failed by the store or the node is tried this many times
ROLE_LABEL = "kubemap.io/role"
LISTER_ROLE = "list-files"
FILEPOD_COMMAND = ["python", "-m", "kubemap.runtime.filetransfer"]
LISTING_RETRY_SECONDS = 2.0


def store_url(spec: MapTaskSpec, settings: Settings) -> str:
    return spec.store.url if spec.store is not None else settings.default_store


def _files_env(spec: MapTaskSpec, settings: Settings) -> list[dict[str, Any]]:
    files = spec.files
    assert files is not None
    env = [
        _env(filetask.ENV_FILES_INPUT, files.input),
        _env(filetask.ENV_FILES_GLOB, files.glob),
        _env(filetask.ENV_FILES_OUTPUT, files.output),
        _env(filetask.ENV_WORK_DIR, filetask.WORK_DIR),
    ]
    if files.skip_existing:
        url = filetask.cache_url(store_url(spec, settings), files, spec.template)
        env.append(_env(filetask.ENV_FILES_CACHE, url))
    return env


def _kubemap_container(
    name: str, step: str, env: list[dict[str, Any]], settings: Settings
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": settings.worker_image,
        "command": [*FILEPOD_COMMAND, step],
        "env": env,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": filetask.VOLUME, "mountPath": filetask.WORK_DIR}],
    }
    defaults = settings.worker_pod_defaults
    if defaults.get("imagePullPolicy"):
        container["imagePullPolicy"] = defaults["imagePullPolicy"]
    if defaults.get("securityContext"):
        container["securityContext"] = copy.deepcopy(dict(defaults["securityContext"]))
    return container


def with_files(
    pod: dict[str, Any], task: TaskRef, spec: MapTaskSpec, settings: Settings
) -> dict[str, Any]:
    """Turn the plain worker pod of one index into fetch -> program -> upload."""
    pod = copy.deepcopy(pod)
    program = pod["spec"]["containers"][0]
    kubemap_env = [e for e in program["env"] if not _is_user_env(e, spec)]
    kubemap_env.extend(_files_env(spec, settings))
    # The program reads and writes local files only: the store's credentials stay with the
    # kubemap containers (give the program env of its own in spec.template.env if it needs any).
    program["env"] = [
        _env(filetask.ENV_INPUT_PATH, filetask.input_path()),
        _env(filetask.ENV_OUTPUT_DIR, filetask.output_dir()),
        *(e for e in program["env"] if _is_user_env(e, spec) or e["name"] not in STORE_ENV),
    ]
    program["name"] = filetask.PROGRAM_CONTAINER
    program["volumeMounts"] = [{"name": filetask.VOLUME, "mountPath": filetask.WORK_DIR}]
    fetch = _kubemap_container(filetask.FETCH_CONTAINER, "fetch", kubemap_env, settings)
    upload = _kubemap_container(filetask.UPLOAD_CONTAINER, "upload", kubemap_env, settings)
    pod["spec"]["initContainers"] = [fetch, program]
    pod["spec"]["containers"] = [upload]
    pod["spec"]["volumes"] = [{"name": filetask.VOLUME, "emptyDir": {}}]
    return pod


def _is_user_env(entry: dict[str, Any], spec: MapTaskSpec) -> bool:
    return any(entry is user or entry == user for user in spec.template.env or [])


def lister_name(task_name: str, attempt: int = 0) -> str:
    """`<task>-list-<attempt>`, cut with a hash like the worker pods' names when long."""
    suffix = f"-list-{attempt}"
    if len(task_name) + len(suffix) <= MAX_NAME:
        return task_name + suffix
    keep = MAX_NAME - len(suffix) - 9
    return f"{task_name[:keep].rstrip('-.')}-{name_digest(task_name)}{suffix}"


def build_lister_pod(
    task: TaskRef, spec: MapTaskSpec, settings: Settings, attempt: int = 0
) -> dict[str, Any]:
    """The pod that lists spec.files into the task's store (inputs.bin / inputs.idx)."""
    env = [*_store_env(spec, task, settings), *_files_env(spec, settings)]
    container = _kubemap_container(filetask.LIST_CONTAINER, "list", env, settings)
    container.pop("volumeMounts")
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    defaults = settings.worker_pod_defaults
    if defaults.get("podSecurityContext"):
        pod_spec["securityContext"] = copy.deepcopy(dict(defaults["podSecurityContext"]))
    if "automountServiceAccountToken" in defaults:
        pod_spec["automountServiceAccountToken"] = bool(defaults["automountServiceAccountToken"])
    template = spec.template
    if template.node_selector:
        pod_spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        pod_spec["tolerations"] = copy.deepcopy(template.tolerations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": lister_name(task.name, attempt),
            "namespace": task.namespace,
            "annotations": {ANNOTATION_ATTEMPT: str(attempt)},
            # No kubemap.io/index: the plan does not see it as an attempt of any index.
            "labels": {**MANAGED_BY, LABEL_TASK: task_label(task.name), ROLE_LABEL: LISTER_ROLE},
            "ownerReferences": [
                {
                    "apiVersion": "kubemap.io/v1alpha1",
                    "kind": "MapTask",
                    "name": task.name,
                    "uid": task.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }


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


__all__ = [
    "build_lister_pod",
    "listed_spec",
    "lister_of",
    "listing_outcome",
    "reconcile_listing",
    "with_files",
]
