"""Talking to the test cluster once it runs: kubeconfigs, readiness, bootstrap objects."""

from __future__ import annotations

import base64
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .pki import KeyPair, Pki
from .state import NAMESPACE, S3_SECRET


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: Pki, user: str, client: KeyPair) -> None:
    """A self-contained kubeconfig (certificates embedded), readable by kubectl, helm and the
    Python client alike."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubemap-testcluster",
                "cluster": {"server": server, "certificate-authority-data": b64(pki.ca.cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [
            {
                "name": "kubemap-testcluster",
                "context": {"cluster": "kubemap-testcluster", "user": user},
            }
        ],
        "current-context": "kubemap-testcluster",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def https_ok(url: str, pki: Pki | None = None) -> bool:
    """GET ``url``; true on 200. With ``pki``, verify the server and present the admin cert;
    without, skip verification (a component's self-signed serving cert on loopback)."""
    if pki is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
    with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
        return bool(resp.status == 200)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bool(resp.status == 200)


def api_client(kubeconfig: Path) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))


def bootstrap(kubeconfig: Path, access_key: str, secret_key: str) -> None:
    """Create the operator's namespace and the S3 credentials Secret where workloads need it."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    with api_client(kubeconfig) as api:
        core = client.CoreV1Api(api)
        try:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        except ApiException as exc:
            if exc.status != 409:
                raise
        for ns in (NAMESPACE, "default"):
            secret = client.V1Secret(
                metadata=client.V1ObjectMeta(
                    name=S3_SECRET, labels={"app.kubernetes.io/part-of": "kubemap"}
                ),
                string_data={"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key},
                type="Opaque",
            )
            try:
                core.create_namespaced_secret(ns, secret)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                core.replace_namespaced_secret(S3_SECRET, ns, secret)


def default_service_account_exists(kubeconfig: Path, namespace: str = "default") -> bool:
    """The serviceaccount controller (in kube-controller-manager) made `default`: pods can be admitted."""
    from kubernetes import client

    with api_client(kubeconfig) as api:
        client.CoreV1Api(api).read_namespaced_service_account("default", namespace)
    return True


def node_ready(kubeconfig: Path, name: str) -> bool:
    from kubernetes import client

    with api_client(kubeconfig) as api:
        node = client.CoreV1Api(api).read_node(name)
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def deployments_available(kubeconfig: Path, namespace: str) -> bool:
    """Every Deployment in ``namespace`` (there is at least one) has all replicas available."""
    from kubernetes import client

    with api_client(kubeconfig) as api:
        items = client.AppsV1Api(api).list_namespaced_deployment(namespace).items
    return bool(items) and all(
        (d.status.available_replicas or 0) >= (d.spec.replicas or 0)
        and (d.status.observed_generation or 0) >= (d.metadata.generation or 0)
        for d in items
    )


def describe_pods(kubeconfig: Path, namespace: str) -> str:
    """One line per pod and container: phase, conditions, waiting/terminated reasons."""
    from kubernetes import client

    with api_client(kubeconfig) as api:
        pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    lines = []
    for pod in pods:
        conds = ",".join(f"{c.type}={c.status}" for c in pod.status.conditions or [])
        lines.append(f"  {pod.metadata.name}: {pod.status.phase} node={pod.spec.node_name} {conds}")
        for cs in pod.status.container_statuses or []:
            state = cs.state.waiting or cs.state.terminated
            detail = f"{state.reason}: {state.message or ''}" if state else "running"
            lines.append(f"    {cs.name}: restarts={cs.restart_count} {detail}")
    return "\n".join(lines) or "  (none)"
