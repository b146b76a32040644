"""Pure builders: the worker pod manifest for one slice of a MapTask (no I/O)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubemap.contract import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_COUNT,
    ANNOTATION_FAILURES,
    ANNOTATION_INFRA,
    API_VERSION,
    ENV_ATTEMPT,
    ENV_COUNT,
    ENV_FAILURES,
    ENV_INDEX,
    ENV_ITEM,
    ENV_ITEMS,
    ENV_TASK_URL,
    ENV_TOTAL,
    KIND,
    LABEL_INDEX,
    LABEL_TASK,
    MAX_LABEL_VALUE,
    POD_FINALIZER,
    name_digest,
    task_label,
)
from kubemap.resources.maptask import MapTaskSpec, Mode
from kubemap.task.signing import key_env, secret_name

from kubemap_operator.podparts import apply_container_defaults, apply_pod_placement
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.planner import PodRequest

MAX_NAME = MAX_LABEL_VALUE
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubemap", "app.kubernetes.io/name": "kubemap-worker"}
WORKER_COMMAND = ["python", "-m", "kubemap.worker"]
CONTAINER_NAME = "worker"


@dataclass(frozen=True)
class TaskRef:
    name: str
    namespace: str
    uid: str


def pod_name(task_name: str, start: int, attempt: int) -> str:
    """`<task>-<index>-<attempt>`; a long task name is cut and a hash of it keeps names unique."""
    suffix = f"-{start}-{attempt}"
    name = f"{task_name}{suffix}"
    if len(name) <= MAX_NAME:
        return name
    keep = MAX_NAME - len(suffix) - 9
    return f"{task_name[:keep].rstrip('-.')}-{name_digest(task_name)}{suffix}"


def _env(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def _store_env(spec: MapTaskSpec, task: TaskRef, settings: Settings) -> list[dict[str, Any]]:
    store = spec.store
    url = store.url if store is not None else settings.default_store
    if not url:
        return []
    env = [_env(ENV_TASK_URL, f"{url.rstrip('/')}/{task.name}")]
    endpoint = (store.endpoint if store else None) or settings.s3_endpoint
    if endpoint:
        env.append(_env("AWS_ENDPOINT_URL_S3", endpoint))
    env.append(_env("AWS_REGION", (store.region if store else None) or settings.s3_region))
    if url.startswith("s3://"):
        secret = (store.secret_name if store else None) or settings.s3_secret
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def build_pod(
    task: TaskRef, spec: MapTaskSpec, request: PodRequest, settings: Settings
) -> dict[str, Any]:
    """The manifest of the pod running [request.start, request.start + request.count)."""
    template = spec.template
    defaults: Mapping[str, Any] = settings.worker_pod_defaults
    env = [
        _env(ENV_INDEX, request.start),
        _env(ENV_COUNT, request.count),
        _env(ENV_TOTAL, spec.total),
        _env(ENV_ATTEMPT, request.attempt),
        _env(ENV_FAILURES, request.failures),
    ]
    if spec.items is not None:
        env.append(_env(ENV_ITEM, spec.items[request.start]))
        env.append(
            _env(ENV_ITEMS, json.dumps(spec.items[request.start : request.start + request.count]))
        )
    env.extend(_store_env(spec, task, settings))
    if spec.mode is Mode.FUNCTION and not spec.pool:
        # The task's key, from the Secret the SDK made (kubemap.task.signing): named, never read.
        env.append(key_env(secret_name(task.name)))
    env.extend(copy.deepcopy(template.env or []))  # the user's env wins: it comes last

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": template.image or settings.worker_image,
        "env": env,
        "terminationMessagePath": "/dev/termination-log",
        # A plain container's last log lines explain its failure when it wrote no message.
        "terminationMessagePolicy": "File"
        if spec.mode is Mode.FUNCTION
        else "FallbackToLogsOnError",
    }
    if template.command is not None:
        container["command"] = list(template.command)
    elif spec.mode is Mode.FUNCTION:
        container["command"] = list(WORKER_COMMAND)
    if template.args is not None:
        container["args"] = list(template.args)
    apply_container_defaults(
        container, defaults, pull=template.image_pull_policy, resources=template.resources
    )

    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    apply_pod_placement(
        pod_spec,
        defaults,
        service_account=template.service_account_name,
        node_selector=template.node_selector,
        tolerations=template.tolerations,
    )
    if "automountServiceAccountToken" in defaults:
        pod_spec["automountServiceAccountToken"] = bool(defaults["automountServiceAccountToken"])

    labels = {
        **(template.labels or {}),
        **MANAGED_BY,
        LABEL_TASK: task_label(task.name),
        LABEL_INDEX: str(request.start),
    }
    annotations = {
        **(template.annotations or {}),
        ANNOTATION_COUNT: str(request.count),
        ANNOTATION_ATTEMPT: str(request.attempt),
        ANNOTATION_FAILURES: str(request.failures),
        ANNOTATION_INFRA: str(request.infra_failures),
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(task.name, request.start, request.attempt),
            "namespace": task.namespace,
            "labels": labels,
            "annotations": annotations,
            "finalizers": [POD_FINALIZER],
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": task.name,
                    "uid": task.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }
    if (
        spec.files is not None
    ):  # fetch -> the user's program -> upload (kubemap_operator.tasks.filelisting)
        from kubemap_operator.tasks.filelisting import with_files  # it builds on this module

        return with_files(pod, task, spec, settings)
    return pod
