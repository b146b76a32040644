"""The one place that talks to the Kubernetes API (the podControl of the Job controller).

The official client is synchronous; calls run in worker threads so kopf's event loop stays free.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from kubemap.contract import GROUP, PLURAL, POD_FINALIZER, VERSION
from kubemap.errors import api_error_message
from kubemap.resources.kueue import GROUP as KUEUE_GROUP
from kubemap.resources.kueue import LOCAL_QUEUES
from kubemap.resources.kueue import VERSION as KUEUE_VERSION
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubemap_operator import metrics

MERGE_PATCH = "application/merge-patch+json"
# "unknown": the operator may not read LocalQueues (403): the pods go to Kueue unchecked.
QueueLookup = Literal["found", "missing", "no-kueue", "unknown"]


@dataclass(frozen=True)
class Throttled(Exception):
    """The API server answered 429: wait `retry_after` seconds before the next create."""

    retry_after: float


@dataclass(frozen=True)
class CreateFailed(Exception):
    """The API server refused a pod (quota, admission, invalid): `reason` says why."""

    status: int
    reason: str


def retry_after(exc: ApiException, default: float = 1.0) -> float:
    headers = exc.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


class TaskApi(Protocol):
    """What the reconciler does with the API: the seam tests replace (as the Job controller's
    podControl). KubeApi is the real one."""

    async def get_task(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def create_pod(
        self, namespace: str, body: dict[str, Any]
    ) -> Literal["created", "exists"]: ...
    async def remove_finalizer(self, namespace: str, pod: dict[str, Any]) -> None: ...
    async def delete_pod(self, namespace: str, name: str) -> None: ...
    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]: ...
    async def delete_task(self, namespace: str, name: str) -> None: ...


class QueueApi(Protocol):
    """Reads Kueue's LocalQueues (KubeApi is the real one)."""

    async def find_local_queue(self, namespace: str, name: str) -> QueueLookup: ...


def counted(api_client: client.ApiClient) -> client.ApiClient:
    """The client, counting each of its requests in the metrics (verb, resource, code)."""
    plain = api_client.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        try:
            response = plain(method, url, *args, **kwargs)
        except ApiException as exc:
            metrics.count_request(method, url, exc.status or 0)
            raise
        except Exception:
            metrics.count_request(method, url, 0)  # no answer: connection refused, timeout
            raise
        metrics.count_request(method, url, int(getattr(response, "status", 0) or 0))
        return response

    setattr(api_client, "request", request)  # noqa: B010 (mypy: no assigning to a method)
    return api_client


class KubeApi:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self._api_client = api_client

    @property
    def api_client(self) -> client.ApiClient:
        """Made on first use: kopf logs in after the startup handlers that build this object."""
        if self._api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            configuration = client.Configuration.get_default_copy()
            # Pod creates run in parallel worker threads: one connection each, no discards.
            configuration.connection_pool_maxsize = 32
            self._api_client = counted(client.ApiClient(configuration))
        return self._api_client

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    async def get_task(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body = await asyncio.to_thread(
                self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(body)

    async def create_pod(
        self, namespace: str, body: dict[str, Any]
    ) -> Literal["created", "exists"]:
        try:
            await asyncio.to_thread(
                self.core.create_namespaced_pod, namespace, body, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 409:
                return "exists"  # a deterministic name: an earlier reconcile already made it
            if exc.status == 429:
                raise Throttled(retry_after(exc)) from None
            raise CreateFailed(exc.status, api_error_message(exc)) from None
        return "created"

    async def remove_finalizer(self, namespace: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        remaining = [f for f in meta.get("finalizers") or [] if f != POD_FINALIZER]
        if len(remaining) == len(meta.get("finalizers") or []):
            return
        # resourceVersion makes this a compare-and-swap: a concurrent change is retried next round.
        patch = {
            "metadata": {
                "finalizers": remaining or None,
                "resourceVersion": meta.get("resourceVersion"),
            }
        }
        try:
            await asyncio.to_thread(
                self.core.patch_namespaced_pod,
                meta["name"],
                namespace,
                patch,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    async def delete_pod(self, namespace: str, name: str) -> None:
        try:
            await asyncio.to_thread(
                self.core.delete_namespaced_pod,
                name,
                namespace,
                propagation_policy="Background",
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status; the object after the patch (the caller's cache needs its
        resourceVersion)."""
        body = await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
            _content_type=MERGE_PATCH,
        )
        return dict(body)

    async def find_local_queue(self, namespace: str, name: str) -> QueueLookup:
        """Whether Kueue's LocalQueue `name` exists in `namespace` ("no-kueue": the API server
        serves no kueue.x-k8s.io API, so no such queue can exist)."""
        try:
            await asyncio.to_thread(
                self.custom.get_namespaced_custom_object,
                KUEUE_GROUP,
                KUEUE_VERSION,
                namespace,
                LOCAL_QUEUES,
                name,
            )
        except ApiException as exc:
            if exc.status == 403:
                return "unknown"
            if exc.status != 404:
                raise
        else:
            return "found"
        try:  # 404: no such queue, or no such API (discovery answers every user)
            await asyncio.to_thread(self.custom.get_api_resources, KUEUE_GROUP, KUEUE_VERSION)
        except ApiException as exc:
            if exc.status == 404:
                return "no-kueue"
            raise
        return "missing"

    async def delete_task(self, namespace: str, name: str) -> None:
        try:
            await asyncio.to_thread(
                self.custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                propagation_policy="Background",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
