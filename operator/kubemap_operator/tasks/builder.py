"""Pure builders (no I/O): the pods of a MapTask as manifests: the worker pod of one slice,
its file-mode shape (spec.files: fetch -> program -> upload), and the pod listing spec.files."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubemap.contract import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_BACKUP,
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
from kubemap.resources import filemode as filetask
from kubemap.resources.kueue import QUEUE_LABEL
from kubemap.resources.maptask import MapTaskSpec, Mode
from kubemap.task.output import ANNOTATION_KEEP_OUTPUT
from kubemap.task.signing import key_env, secret_name

from kubemap_operator.podparts import apply_container_defaults, apply_pod_placement
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.planner import PodRequest

MAX_NAME = MAX_LABEL_VALUE
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubemap", "app.kubernetes.io/name": "kubemap-worker"}
WORKER_COMMAND = ["python", "-m", "kubemap.worker"]
CONTAINER_NAME = "worker"
STORE_ENV = frozenset(
    {
        "KUBEMAP_TASK_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
)
ROLE_LABEL = "kubemap.io/role"
LISTER_ROLE = "list-files"
FILEPOD_COMMAND = ["python", "-m", "kubemap.runtime.filetransfer"]
CAPTURE_COMMAND = ["python", "-m", "kubemap.runtime.capture", "--"]


@dataclass(frozen=True)
class TaskRef:
    name: str
    namespace: str
    uid: str


def pod_name(task_name: str, start: int, attempt: int, backup: bool = False) -> str:
    """`<task>-<index>-<attempt>` (`...s` for a backup copy, kubemap.core.speculation); a long
    task name is cut and a hash of it keeps names unique."""
    suffix = f"-{start}-{attempt}" + ("s" if backup else "")
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
        if keeps_output(spec, settings, env):
            container["command"][:0] = CAPTURE_COMMAND
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

    if template.priority_class_name:
        pod_spec["priorityClassName"] = template.priority_class_name
    labels = {
        **(template.labels or {}),
        **MANAGED_BY,
        LABEL_TASK: task_label(task.name),
        LABEL_INDEX: str(request.start),
    }
    queue = task_queue(spec, settings)
    if queue:  # Kueue's webhook gates the pod until the queue admits it
        labels[QUEUE_LABEL] = queue
    annotations = {
        **(template.annotations or {}),
        ANNOTATION_COUNT: str(request.count),
        ANNOTATION_ATTEMPT: str(request.attempt),
        ANNOTATION_FAILURES: str(request.failures),
        ANNOTATION_INFRA: str(request.infra_failures),
    }
    if request.backup:
        annotations[ANNOTATION_BACKUP] = "true"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(task.name, request.start, request.attempt, request.backup),
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
    if spec.files is not None:  # fetch -> the user's program -> upload
        return with_files(pod, task, spec, settings)
    return pod


def keeps_output(spec: MapTaskSpec, settings: Settings, env: list[dict[str, Any]]) -> bool:
    """Whether a container's command runs through kubemap's output keeper (runtime.capture),
    which needs kubemap in the image: the worker image, or an image whose pods are annotated
    kubemap.io/keep-output: "true" (built FROM it); "false" turns it off. Only with a store
    to keep the output in; files tasks' programs get no store credentials."""
    if spec.mode is not Mode.CONTAINER or spec.files is not None:
        return False
    if not any(e.get("name") == ENV_TASK_URL for e in env):
        return False
    wanted = (spec.template.annotations or {}).get(ANNOTATION_KEEP_OUTPUT, "").strip().lower()
    if wanted in ("true", "false"):
        return wanted == "true"
    return spec.template.image in (None, settings.worker_image)


def task_queue(spec: MapTaskSpec, settings: Settings) -> str | None:
    """The Kueue LocalQueue a task's pods go to: spec.queueName, else the chart's default,
    else None (Kueue then applies the namespace's LocalQueue "default" if there is one)."""
    return spec.queue_name or settings.default_queue or None


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
    """Turn the plain worker pod of one index into fetch -> program -> upload.

    Design in kubemap.resources.filemode. Why init containers and not a wrapper: the user's image is any
    image (busybox, ImageMagick...), with no Python to run a kubemap wrapper in, so the kubemap
    image does the store work in its own containers around it, sharing an emptyDir:

        init  kubemap-fetch   (kubemap image)  the item's file -> /kubemap/input/file
        init  worker          (user's image)   the user's command, unchanged
        main  kubemap-upload  (kubemap image)  /kubemap/output/** -> <output>/<name>/, once

    Init containers run in order and each must succeed, so the upload runs only after the
    program succeeded, and a failing program fails the pod with its own exit code. Every
    container gets the restricted security context of the operator's pod defaults.
    """
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
