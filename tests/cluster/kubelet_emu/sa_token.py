"""ServiceAccount credentials for a pod: a bound token (TokenRequest API) and a kubeconfig.

The kubelet projects the token into /var/run/secrets/kubernetes.io/serviceaccount; here
the same three files (token, ca.crt, namespace) go to <poddir>/serviceaccount/, and a
kubeconfig that uses the token goes to <poddir>/kubeconfig, which the pod gets as
KUBECONFIG. The token is bound to the pod, so it stops working when the pod is deleted,
and the API server enforces RBAC for the ServiceAccount on whatever the process does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .api import Api, ClusterInfo

TOKEN_SECONDS = 24 * 3600
#: Like the kubelet, refresh a token when 80% of its lifetime has passed.
REFRESH_AFTER = 0.8 * TOKEN_SECONDS
SETUP_RETRY = 2.0

log = logging.getLogger("kubelet_emu.sa_token")


def service_account_name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("spec") or {}).get("serviceAccountName") or "default")


def projects_token(pod: Mapping[str, Any]) -> bool:
    """True when a volume projects a ServiceAccount token (the admission plugin adds one)."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in source:
                return True
    return False


def wants_token(pod: Mapping[str, Any], service_account: Mapping[str, Any] | None) -> bool:
    """The pod's automountServiceAccountToken wins, then the ServiceAccount's, then true."""
    if projects_token(pod):
        return True
    pod_choice = (pod.get("spec") or {}).get("automountServiceAccountToken")
    if pod_choice is not None:
        return bool(pod_choice)
    sa_choice = (service_account or {}).get("automountServiceAccountToken")
    return True if sa_choice is None else bool(sa_choice)


def kubeconfig_for(
    cluster: ClusterInfo, namespace: str, sa_name: str, token: str, ca_file: Path | None
) -> dict[str, Any]:
    cluster_entry: dict[str, Any] = {"server": cluster.server}
    if cluster.insecure:
        cluster_entry["insecure-skip-tls-verify"] = True
    elif ca_file is not None:
        cluster_entry["certificate-authority"] = str(ca_file)
    user = f"system:serviceaccount:{namespace}:{sa_name}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubemap-test", "cluster": cluster_entry}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": "pod",
                "context": {"cluster": "kubemap-test", "user": user, "namespace": namespace},
            }
        ],
        "current-context": "pod",
    }


def _write_private(path: Path, data: bytes) -> None:
    """Write a 0600 file atomically: a process reading it never sees half a token."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def request_token(api: Api, pod: Mapping[str, Any]) -> str:
    meta = pod["metadata"]
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": TOKEN_SECONDS,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }
    path = (
        f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{service_account_name(pod)}/token"
    )
    return str(api.create(path, body)["status"]["token"])


def write_credentials(
    api: Api, pod: Mapping[str, Any], cluster: ClusterInfo, pod_dir: Path
) -> Path | None:
    """Write the pod's token files and kubeconfig; return the kubeconfig path, None if no token."""
    namespace = str(pod["metadata"]["namespace"])
    sa_name = service_account_name(pod)
    service_account = api.get_or_none(f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa_name}")
    if not wants_token(pod, service_account):
        return None
    if service_account is None:
        raise LookupError(f'serviceaccount "{sa_name}" not found in namespace {namespace}')
    token = request_token(api, pod)
    sa_dir = pod_dir / "serviceaccount"
    sa_dir.mkdir(parents=True, exist_ok=True)
    _write_private(sa_dir / "token", token.encode())
    (sa_dir / "namespace").write_text(namespace)
    ca_file: Path | None = None
    if cluster.ca_pem:
        ca_file = sa_dir / "ca.crt"
        ca_file.write_bytes(cluster.ca_pem)
    kubeconfig = pod_dir / "kubeconfig"
    doc = kubeconfig_for(cluster, namespace, sa_name, token, ca_file)
    _write_private(kubeconfig, yaml.safe_dump(doc).encode())
    return kubeconfig


class PodCredentials:
    """One pod's ServiceAccount credentials over time: first written, retried, refreshed."""

    def __init__(self, api: Api, cluster: ClusterInfo, pod_dir: Path) -> None:
        self.api = api
        self.cluster = cluster
        self.pod_dir = pod_dir
        self.kubeconfig: Path | None = None
        self.ready = False
        self._next = 0.0

    def due(self) -> float | None:
        """When tick() has work to do (time.monotonic()), None if never again."""
        return None if self.ready and self.kubeconfig is None else self._next

    def tick(self, pod: Mapping[str, Any], now: float) -> str | None:
        """Write or refresh the credentials when due; the error if the first write failed."""
        if self.due() is None or now < self._next:
            return None
        try:
            self.kubeconfig = write_credentials(self.api, pod, self.cluster, self.pod_dir)
        except Exception as exc:
            if self.ready:
                log.warning(
                    "%s: refreshing the ServiceAccount token failed: %s", self.pod_dir.name, exc
                )
                self._next = now + 60
                return None
            self._next = now + SETUP_RETRY
            return f"MountVolume.SetUp failed for the ServiceAccount token: {exc}"
        if self.ready:
            log.info("%s: refreshed the ServiceAccount token", self.pod_dir.name)
        self.ready = True
        self._next = now + REFRESH_AFTER
        return None
