"""Keep what a failed pod said after the pod is gone.

The planner keeps the newest failed pods for their logs and deletes older ones (and a
task's pods go when the task goes). Before a failed pod is deleted, the operator copies a
bounded record of it into the ConfigMap `<task label>-logs`, owned by the MapTask (so it is
deleted with it): per failed index, the pod's name, attempt, exit code, its termination
message and the tail of its log. `kubemap logs NAME --index I` reads it when no pod is left.

Bounded: at most KEPT_INDICES indices (the newest failures win), TAIL_BYTES of log and
MESSAGE_BYTES of termination message each, one ConfigMap write and at most KEPT_INDICES log
reads per reconcile. Best effort: a failure here is logged and never blocks the reconcile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from kubemap.contract import ANNOTATION_ATTEMPT, LABEL_INDEX, LABEL_TASK
from kubernetes.client.exceptions import ApiException

KEPT_INDICES = 20
TAIL_BYTES = 4096
MESSAGE_BYTES = 2048
ORDER_KEY = "order"  # the kept indices, oldest first: "12,3,7"
SUFFIX = "-logs"


def configmap_name(task_label: str) -> str:
    return f"{task_label}{SUFFIX}"


def failed(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Failed"


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (status.get("state") or {}).get("terminated") or (
            status.get("lastState") or {}
        ).get("terminated")
        if state:
            return dict(state)
    return {}


def record_text(pod: dict[str, Any], log_tail: str | None, log_error: str | None) -> str:
    """What `kubemap logs` prints for a pod that no longer exists."""
    meta = pod.get("metadata") or {}
    state = _terminated(pod)
    attempt = (meta.get("annotations") or {}).get(ANNOTATION_ATTEMPT, "0")
    head = (
        f"pod {meta.get('name')} (attempt {attempt}) exited with code "
        f"{state.get('exitCode', '?')}"
        + (f" ({state['reason']})" if state.get("reason") else "")
        + (f" at {state['finishedAt']}" if state.get("finishedAt") else "")
    )
    parts = [head]
    message = str(state.get("message") or "").strip()
    if message:
        parts += ["--- termination message ---", _tail(message, MESSAGE_BYTES)]
    if log_tail is not None:
        parts += [f"--- last {TAIL_BYTES} bytes of its log ---", _tail(log_tail, TAIL_BYTES)]
    else:
        parts.append(f"--- its log could not be read: {log_error} ---")
    return "\n".join(parts).rstrip() + "\n"


def _tail(text: str, limit: int) -> str:
    data = text.encode()
    return text if len(data) <= limit else data[-limit:].decode(errors="replace")


def merged(
    data: dict[str, str], records: dict[str, str], keep: int = KEPT_INDICES
) -> dict[str, str | None]:
    """The ConfigMap patch that adds `records` (index -> text) and drops the oldest indices
    beyond `keep` (None deletes a key in a merge patch)."""
    order = [i for i in (data.get(ORDER_KEY) or "").split(",") if i and i not in records]
    order += list(records)
    dropped, order = order[:-keep], order[-keep:]
    patch: dict[str, str | None] = {i: None for i in dropped if i in data}
    patch.update(records)
    patch[ORDER_KEY] = ",".join(order)
    return patch


async def keep_failed(
    api: Any, namespace: str, task: dict[str, Any], pods: Iterable[dict[str, Any]], logger: Any
) -> int:
    """Record the failed pods among `pods` (about to be deleted); returns how many.
    `api` is the operator's KubeApi (its `core` is a CoreV1Api)."""
    doomed = [p for p in pods if failed(p)][-KEPT_INDICES:]
    if not doomed:
        return 0
    try:
        core = api.core
        records: dict[str, str] = {}
        for pod in doomed:
            meta = pod.get("metadata") or {}
            index = str((meta.get("labels") or {}).get(LABEL_INDEX, "0"))
            tail, error = await _read_tail(core, namespace, str(meta.get("name")))
            records[index] = record_text(pod, tail, error)
        label = str(((doomed[0].get("metadata") or {}).get("labels") or {}).get(LABEL_TASK))
        await _write(core, namespace, configmap_name(label), task, records)
    except Exception as exc:  # best effort: the pods' outcome is recorded already
        logger.warning(f"could not keep the logs of {len(doomed)} failed pod(s): {exc}")
        return 0
    return len(doomed)


async def _read_tail(core: Any, namespace: str, name: str) -> tuple[str | None, str | None]:
    try:
        # Raw bytes, decoded here: kubernetes-client 36 returns the repr of the bytes when it
        # decodes a log itself (kubernetes-client/python#2596).
        response = await asyncio.to_thread(
            core.read_namespaced_pod_log,
            name,
            namespace,
            limit_bytes=TAIL_BYTES * 2,
            _preload_content=False,
        )
    except ApiException as exc:
        return None, f"HTTP {exc.status} {exc.reason}"
    return bytes(response.data).decode("utf-8", "replace"), None


async def _read(core: Any, namespace: str, name: str) -> dict[str, str] | None:
    try:
        current = await asyncio.to_thread(core.read_namespaced_config_map, name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(current.data or {})


def _new_configmap(name: str, task: dict[str, Any], records: dict[str, str]) -> dict[str, Any]:
    meta = task.get("metadata") or {}
    owner = {
        "apiVersion": task.get("apiVersion", "kubemap.io/v1alpha1"),
        "kind": "MapTask",
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "controller": True,
    }
    data = {k: v for k, v in merged({}, records).items() if v is not None}
    return {
        "metadata": {
            "name": name,
            "labels": {LABEL_TASK: name.removesuffix(SUFFIX)},
            "ownerReferences": [owner],
        },
        "data": data,
    }


async def _write(
    core: Any, namespace: str, name: str, task: dict[str, Any], records: dict[str, str]
) -> None:
    data = await _read(core, namespace, name)
    if data is None:
        body = _new_configmap(name, task, records)
        try:
            await asyncio.to_thread(core.create_namespaced_config_map, namespace, body)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        data = await _read(core, namespace, name) or {}  # made meanwhile: add to it
    patch = {"data": merged(data, records)}
    await asyncio.to_thread(core.patch_namespaced_config_map, name, namespace, patch)
