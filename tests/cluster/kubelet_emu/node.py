"""The Node object: registration, status, and heartbeats (a Lease in kube-node-lease)."""

from __future__ import annotations

import datetime as dt
import logging
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from .api import Api, Obj
from .podstatus import rfc3339

log = logging.getLogger("kubelet_emu.node")

LEASE_SECONDS = 40
RENEW_EVERY = 10.0
STATUS_EVERY = 60.0


@dataclass(frozen=True)
class NodeConfig:
    name: str
    cpu: str
    memory: str
    pods: str
    host_ip: str = "127.0.0.1"
    kubelet_port: int = 0  # where kubeletstream serves logs and port-forward; 0: nothing

    @property
    def allocatable(self) -> dict[str, str]:
        return {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": self.pods,
            "ephemeral-storage": "100Gi",
        }


def node_object(cfg: NodeConfig) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.name,
            "labels": {
                "kubernetes.io/hostname": cfg.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubemap.io/emulated-node": "true",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
    }


def node_status(cfg: NodeConfig, *, ready_since: float, now: float, kubelet_version: str) -> Obj:
    """Node status with capacity, a Ready condition and the pressure conditions all False."""

    def cond(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": rfc3339(now),
            "lastTransitionTime": rfc3339(ready_since),
        }

    return {
        "capacity": cfg.allocatable,
        "allocatable": cfg.allocatable,
        "conditions": [
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond(
                "DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"
            ),
            cond(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            cond("Ready", "True", "KubeletReady", "kubemap node emulator is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": cfg.host_ip},
            {"type": "Hostname", "address": cfg.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": platform.release(),
            "osImage": "kubemap node emulator (processes on the host)",
            "containerRuntimeVersion": "kubemap-emulator://0.1.0",
            "kubeletVersion": kubelet_version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def micro_time(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NodeAgent(threading.Thread):
    """Registers the node, then renews its Lease every 10 s and its status every minute."""

    def __init__(self, api: Api, cfg: NodeConfig) -> None:
        super().__init__(name="node-heartbeat", daemon=True)
        self.api = api
        self.cfg = cfg
        self.ready_since = time.time()
        self.kubelet_version = "v0.0.0-emulated"
        self.uid = ""

    def register(self) -> None:
        try:
            version = self.api.get("/version")
            self.kubelet_version = f"{version.get('gitVersion', 'v0.0.0')}-kubemap-emulated"
        except Exception as exc:  # the version only decorates nodeInfo
            log.warning("could not read the API server version: %s", exc)
        try:
            node = self.api.create("/api/v1/nodes", node_object(self.cfg))
            log.info("registered node %s", self.cfg.name)
        except ApiException as exc:
            if exc.status != 409:
                raise
            node = self.api.patch(
                f"/api/v1/nodes/{self.cfg.name}", {"metadata": node_object(self.cfg)["metadata"]}
            )
            log.info("node %s already registered; taking it over", self.cfg.name)
        self.uid = node["metadata"]["uid"]
        self.post_status()
        self.renew_lease()

    def post_status(self) -> None:
        status = node_status(
            self.cfg,
            ready_since=self.ready_since,
            now=time.time(),
            kubelet_version=self.kubelet_version,
        )
        self.api.patch(f"/api/v1/nodes/{self.cfg.name}/status", {"status": status})

    def renew_lease(self) -> None:
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        spec = {
            "holderIdentity": self.cfg.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_time(time.time()),
        }
        try:
            self.api.patch(
                f"{path}/{self.cfg.name}",
                {"spec": spec},
                content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.cfg.name, "uid": self.uid}
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.cfg.name, "ownerReferences": [owner]},
                "spec": spec,
            }
            self.api.create(path, body)

    def run(self) -> None:
        last_status = time.monotonic()
        while True:
            time.sleep(RENEW_EVERY)
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= STATUS_EVERY:
                    self.post_status()
                    last_status = time.monotonic()
            except ApiException as exc:
                if (
                    exc.status == 404
                    and self.api.get_or_none(f"/api/v1/nodes/{self.cfg.name}") is None
                ):
                    log.warning("node %s was deleted; registering it again", self.cfg.name)
                    self._try(self.register)
                else:
                    log.warning("node heartbeat failed: %s %s", exc.status, exc.reason)
            except Exception as exc:
                log.warning("node heartbeat failed: %s", exc)

    def _try(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:
            log.warning("%s failed: %s", getattr(action, "__name__", action), exc)
