"""The Kubernetes calls of the pool reconcile: WorkerPools, their Secret and Deployment.

Secrets are only ever created or patched, never read: the token is derived (tokens.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubemap.contract import GROUP, VERSION
from kubemap.resources.workerpool import LABEL_POOL, POOL_PLURAL
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubemap_operator.kubeapi import MERGE_PATCH, KubeApi, QueueLookup


class PoolApi:
    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.kube.api_client)

    async def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body = await asyncio.to_thread(
                self.kube.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                POOL_PLURAL,
                name,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(body)

    async def patch_pool_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self.kube.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            POOL_PLURAL,
            name,
            {"status": status},
            _content_type=MERGE_PATCH,
        )

    async def list_pool_pods(self, namespace: str, pool: str) -> list[dict[str, Any]]:
        result = await asyncio.to_thread(
            self.kube.core.list_namespaced_pod,
            namespace,
            label_selector=f"{LABEL_POOL}={pool}",
            _preload_content=False,
        )
        return list(json.loads(result.data).get("items") or [])

    async def find_local_queue(self, namespace: str, name: str) -> QueueLookup:
        return await self.kube.find_local_queue(namespace, name)

    async def put_secret(self, namespace: str, body: dict[str, Any]) -> None:
        """Create the Secret, or overwrite its data when it exists (no read needed)."""
        try:
            await asyncio.to_thread(
                self.kube.core.create_namespaced_secret, namespace, body, _preload_content=False
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            await asyncio.to_thread(
                self.kube.core.patch_namespaced_secret,
                body["metadata"]["name"],
                namespace,
                {
                    "data": body["data"],
                    "metadata": {"ownerReferences": body["metadata"]["ownerReferences"]},
                },
                _preload_content=False,
            )

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result = await asyncio.to_thread(
                self.apps.read_namespaced_deployment, name, namespace, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data: dict[str, Any] = json.loads(result.data)
        return data

    async def create_deployment(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(
                self.apps.create_namespaced_deployment, namespace, body, _preload_content=False
            )
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def patch_deployment(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self.apps.patch_namespaced_deployment,
            name,
            namespace,
            patch,
            _content_type=MERGE_PATCH,
            _preload_content=False,
        )
