"""What the Helm chart tells the SDK: the install's default store, S3 endpoint and worker image.

The chart publishes them in the ConfigMap `kubemap-defaults` of its release namespace (no
secrets in it) and lets every authenticated user read that one ConfigMap. With
backend="kubernetes" and no store given (no store=, no $KUBEMAP_STORE), the SDK submits to
the chart's `s3.defaultStore`; it checks the worker image's Python before submitting.
The chart's S3 endpoint and region go to that store's client only (ChartStore.open), unless
the caller configured their own: the caller's os.environ is never written.

Where it looks: $KUBEMAP_OPERATOR_NAMESPACE, else the task's namespace, else kubemap-system.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubemap.errors import ClusterError
from kubemap.stores import Store, open_store
from kubemap.stores.s3 import S3Store

if TYPE_CHECKING:
    from kubemap.backends.kubernetes.client import Cluster

CONFIGMAP_NAME = "kubemap-defaults"
ENV_OPERATOR_NAMESPACE = "KUBEMAP_OPERATOR_NAMESPACE"
DEFAULT_OPERATOR_NAMESPACE = "kubemap-system"
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class ClusterDefaults:
    """The `data` of the chart's kubemap-defaults ConfigMap ("" where the chart sets none)."""

    namespace: str
    store: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""
    worker_image: str = ""
    worker_python: str = ""
    s3_secret: str = ""  # the Secret worker pods read their S3 keys from (not its keys)

    @classmethod
    def from_data(cls, namespace: str, data: dict[str, str]) -> ClusterDefaults:
        return cls(
            namespace=namespace,
            store=data.get("defaultStore", "").strip(),
            s3_endpoint=data.get("s3Endpoint", "").strip(),
            s3_region=data.get("s3Region", "").strip(),
            worker_image=data.get("workerImage", "").strip(),
            worker_python=data.get("workerPython", "").strip(),
            s3_secret=data.get("s3Secret", "").strip(),
        )

    @property
    def where(self) -> str:
        return f"ConfigMap {self.namespace}/{CONFIGMAP_NAME}"


def candidate_namespaces(task_namespace: str) -> list[str]:
    configured = os.environ.get(ENV_OPERATOR_NAMESPACE, "").strip()
    if configured:
        return [configured]
    return list(dict.fromkeys([task_namespace, DEFAULT_OPERATOR_NAMESPACE]))


def find_defaults(cluster: Cluster) -> ClusterDefaults | None:
    """The chart's published defaults as `cluster` reads them, or None when no
    kubemap-defaults ConfigMap is readable (an older chart, another install method, or no
    RBAC to read it)."""
    from kubernetes.client.exceptions import ApiException

    for ns in candidate_namespaces(cluster.namespace):
        try:
            found: Any = cluster.call(
                "read the kubemap-defaults ConfigMap",
                cluster.core.read_namespaced_config_map,
                CONFIGMAP_NAME,
                ns,
            )
        except ApiException as exc:
            if exc.status in (403, 404):
                continue  # not there, or not ours to read: look in the next namespace
            raise ClusterError(
                f"reading ConfigMap {ns}/{CONFIGMAP_NAME} failed: {exc.reason}"
            ) from None
        return ClusterDefaults.from_data(ns, dict(found.data or {}))
    return None


@dataclass(frozen=True)
class ChartStore:
    """The chart's default store and the S3 endpoint / region the SDK reaches it through
    ("": the caller's own AWS settings)."""

    url: str
    endpoint: str = ""
    region: str = ""

    def open(self) -> Store:
        store = open_store(self.url)
        if isinstance(store, S3Store) and (self.endpoint or self.region):
            return S3Store(store.bucket, store.prefix, endpoint=self.endpoint, region=self.region)
        return store


def chart_store(defaults: ClusterDefaults) -> ChartStore:
    """The chart's store, through its S3 endpoint unless the caller configured one: the SDK
    uploads to the same store the pods read. An endpoint only reachable inside the cluster
    fails with a StoreError naming it; set AWS_ENDPOINT_URL_S3 then."""
    own_endpoint = any(os.environ.get(v) for v in _ENDPOINT_VARS)
    own_region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return ChartStore(
        defaults.store,
        endpoint="" if own_endpoint else defaults.s3_endpoint,
        region="" if own_region else defaults.s3_region,
    )


def check_submit(
    store: str | None, image: str | None, defaults: Callable[[], ClusterDefaults | None]
) -> ChartStore | None:
    """Checks before a Kubernetes submit: refuse a worker image whose Python minor is known
    and differs from ours; return the chart's default store when the caller gave none.
    `defaults` reads the chart's defaults; it is called only when they are needed."""
    from kubemap.contract import ENV_STORE
    from kubemap.task.meta import image_python, refuse_image_python

    if image:
        refuse_image_python(image_python(image), f"image {image}")
    need_store = not store and not os.environ.get(ENV_STORE, "").strip()
    if image and not need_store:
        return None
    found = defaults()
    if found is None:
        return None
    if not image:
        worker_python = found.worker_python or image_python(found.worker_image)
        refuse_image_python(
            worker_python, f"the cluster's worker image {found.worker_image} ({found.where})"
        )
    if need_store and found.store:
        return chart_store(found)
    return None
