"""Pure builders for a WorkerPool's children: its token Secret and its worker Deployment.

A Deployment (not pods the operator makes one by one) keeps the workers: the platform's own
controller replaces a deleted or crashed worker, and scaling is one field. Its pods carry
`kubemap.io/pool=<name>` (what the chart's NetworkPolicy admits to the dispatcher) and meet
the restricted Pod Security Standard through the operator's worker pod defaults.

With spec.queueName the Deployment and its pod template carry Kueue's queue label: Kueue's
deployment integration admits each pod on its own against the queue's quota, counting the
container's resource requests (spec.resources, else the chart's default worker resources).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

from kubemap.contract import API_VERSION, ENV_PACKAGE_CACHE, ENV_POOL_PACKAGES, ENV_TASK_URL
from kubemap.resources.kueue import QUEUE_LABEL
from kubemap.resources.workerpool import (
    ENV_DISPATCHER,
    ENV_POOL,
    ENV_POOL_TOKEN,
    LABEL_POOL,
    POOL_KIND,
    POOL_WORKER_COMMAND,
    TOKEN_KEY,
    WorkerPoolSpec,
    pool_resource_name,
)
from kubemap.task.signing import POOL_KEY_ENV, key_env, pool_secret_name

from kubemap_operator.podparts import apply_container_defaults, apply_pod_placement
from kubemap_operator.settings import Settings

ANNOTATION_TEMPLATE_HASH = "kubemap.io/template-hash"
POOL_MANAGED_BY = {
    "app.kubernetes.io/managed-by": "kubemap",
    "app.kubernetes.io/name": "kubemap-pool-worker",
}


def owner(pool_name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": POOL_KIND,
        "name": pool_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def queue_labels(spec: WorkerPoolSpec) -> dict[str, str]:
    """Kueue's queue label, for a pool in a queue (none otherwise)."""
    return {QUEUE_LABEL: spec.queue_name} if spec.queue_name else {}


def token_secret(namespace: str, pool_name: str, uid: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": pool_resource_name(pool_name),
            "namespace": namespace,
            "labels": {**POOL_MANAGED_BY, LABEL_POOL: pool_name},
            "ownerReferences": [owner(pool_name, uid)],
        },
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


_FIXED_NAMES = {
    ENV_DISPATCHER,
    ENV_POOL,
    ENV_POOL_TOKEN,
    POOL_KEY_ENV,
}  # the pool's env cannot steer these


def _s3_env(settings: Settings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if settings.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": settings.s3_endpoint})
    env.append({"name": "AWS_REGION", "value": settings.s3_region})
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        ref = {"name": settings.s3_secret, "key": key, "optional": True}
        env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


PACKAGE_CACHE_VOLUME = "packages"
PACKAGE_CACHE_PATH = "/var/cache/kubemap-packages"


def _package_env(spec: WorkerPoolSpec) -> list[dict[str, Any]]:
    """Where workers install runtime packages (an emptyDir: a read-only root still works),
    and the pool's own packages; a task's packages come with its lease."""
    env = [{"name": ENV_PACKAGE_CACHE, "value": PACKAGE_CACHE_PATH}]
    if spec.packages:
        env.append({"name": ENV_POOL_PACKAGES, "value": json.dumps(sorted(spec.packages))})
    return env


def _override(base: list[dict[str, Any]], user: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pool's env wins over kubemap's defaults of the same name (one entry per name)."""
    names = {e.get("name") for e in user}
    return [e for e in base if e["name"] not in names] + user


def worker_template(
    namespace: str, pool_name: str, spec: WorkerPoolSpec, settings: Settings
) -> dict[str, Any]:
    """The pod template of the pool's workers (everything but the replica count)."""
    defaults = settings.worker_pod_defaults
    token_ref = {"name": pool_resource_name(pool_name), "key": TOKEN_KEY}
    fixed: list[dict[str, Any]] = [
        {"name": ENV_DISPATCHER, "value": settings.dispatcher_url},
        {"name": ENV_POOL, "value": f"{namespace}/{pool_name}"},
        {"name": ENV_POOL_TOKEN, "valueFrom": {"secretKeyRef": token_ref}},
        # The pool's signing key, from the Secret the SDK makes (kubemap.task.signing): named only.
        key_env(pool_secret_name(pool_resource_name(pool_name)), POOL_KEY_ENV),
    ]
    kubemap_env = [
        *_s3_env(settings),
        *_package_env(spec),
        *({"name": k, "value": v} for k, v in sorted(settings.pip_env.items())),
    ]
    user = [e for e in copy.deepcopy(spec.env or []) if e.get("name") not in _FIXED_NAMES]
    env = [*fixed, *_override(kubemap_env, user)]
    env = [e for e in env if e["name"] != ENV_TASK_URL]  # a pool serves many tasks
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.image or settings.worker_image,
        "command": list(POOL_WORKER_COMMAND),
        "env": env,
        "volumeMounts": [{"name": PACKAGE_CACHE_VOLUME, "mountPath": PACKAGE_CACHE_PATH}],
    }
    apply_container_defaults(
        container, defaults, pull=spec.image_pull_policy, resources=spec.resources
    )
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": PACKAGE_CACHE_VOLUME, "emptyDir": {}}],
        "restartPolicy": "Always",
        # A worker finishes (or hands back) its chunk on SIGTERM: give it time for that.
        "terminationGracePeriodSeconds": 30,
    }
    apply_pod_placement(
        pod_spec,
        defaults,
        service_account=spec.service_account_name,
        node_selector=spec.node_selector,
        tolerations=spec.tolerations,
    )
    # A pool worker talks to the dispatcher, never to the API server: no token unless asked.
    pod_spec["automountServiceAccountToken"] = bool(
        defaults.get("automountServiceAccountToken", False)
    )
    # The label on the template too, not only where Kueue copies it from: the template hash
    # (and so a rollout) follows a change of queue.
    return {
        "metadata": {"labels": {**POOL_MANAGED_BY, LABEL_POOL: pool_name, **queue_labels(spec)}},
        "spec": pod_spec,
    }


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def deployment(
    namespace: str,
    pool_name: str,
    uid: str,
    spec: WorkerPoolSpec,
    replicas: int,
    settings: Settings,
) -> dict[str, Any]:
    template = worker_template(namespace, pool_name, spec, settings)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": pool_resource_name(pool_name),
            "namespace": namespace,
            "labels": {**POOL_MANAGED_BY, LABEL_POOL: pool_name, **queue_labels(spec)},
            "annotations": {ANNOTATION_TEMPLATE_HASH: template_hash(template)},
            "ownerReferences": [owner(pool_name, uid)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {LABEL_POOL: pool_name}},
            "template": template,
        },
    }
