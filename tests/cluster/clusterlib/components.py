"""Command lines of the cluster's components: what each one is told, and why.

Everything binds 127.0.0.1. Ports are chosen free at ``up`` time and recorded in the state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .pki import Pki

SERVICE_CIDR = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"

# Admission: --enable-admission-plugins adds to the release's default-on set (which in 1.35
# already holds these); naming them keeps the policy the tests rely on explicit. NodeRestriction
# is off by default and matters only to node identities.
ADMISSION = "NamespaceLifecycle,ServiceAccount,PodSecurity,NodeRestriction"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    s3: int
    s3_grpc: int
    weed_master: int
    weed_master_grpc: int
    weed_volume: int
    weed_volume_grpc: int
    weed_filer: int
    weed_filer_grpc: int
    kubelet: int  # the emulated node's kubelet endpoint (kubeletstream)


def etcd(bin_dir: Path, state: Path, ports: Ports) -> list[str]:
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    client = f"http://127.0.0.1:{ports.etcd_client}"
    return [
        str(bin_dir / "etcd"),
        "--name=testcluster",
        f"--data-dir={state / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=testcluster={peer}",
        "--listen-metrics-urls=",
        "--log-level=warn",
        # A throwaway test store: durability across power loss buys nothing here, while
        # fsync on a disk shared by six engineers adds latency to every write.
        "--unsafe-no-fsync",
    ]


def kube_apiserver(bin_dir: Path, pki: Pki, ports: Ports) -> list[str]:
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={pki.apiserver.cert}",
        f"--tls-private-key-file={pki.apiserver.key}",
        f"--client-ca-file={pki.ca.cert}",
        "--authorization-mode=Node,RBAC",
        f"--enable-admission-plugins={ADMISSION}",
        # Privileged pods are allowed by the API server so that the PodSecurity admission, not
        # this flag, is what rejects them in namespaces that enforce `restricted`.
        "--allow-privileged=true",
        f"--service-account-issuer={ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # The aggregation layer's request-header authentication, as kubeadm sets it up: without
        # it every delegating component (the controller manager too) logs a missing CA bundle.
        f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
        f"--proxy-client-key-file={pki.front_proxy_client.key}",
        # Nodes' IPs before their hostnames, which nothing here resolves (logs, exec).
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        # pods/log, pods/portforward: the API server presents this client cert to a node's
        # kubelet endpoint and verifies the endpoint's serving cert against the cluster CA.
        f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
        f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
        f"--kubelet-certificate-authority={pki.ca.cert}",
        "--profiling=false",
        "--v=1",
    ]


def kube_controller_manager(bin_dir: Path, pki: Pki, kubeconfig: Path, ports: Ports) -> list[str]:
    return [
        str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.controller_manager}",
        # Every controller that is on by default: garbagecollector, namespace, deployment,
        # replicaset, job, serviceaccount, serviceaccount-token, node-lifecycle, ...
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca.cert}",
        f"--cluster-signing-cert-file={pki.ca.cert}",
        f"--cluster-signing-key-file={pki.ca.key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def write_s3_identities(path: Path, access_key: str, secret_key: str) -> None:
    """SeaweedFS S3 identity file: one identity with full rights, so requests are really signed
    and checked (an unsigned or wrongly signed request gets 403)."""
    config = {
        "identities": [
            {
                "name": "kubemap",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


def weed(weed_bin: Path, state: Path, identities: Path, ports: Ports) -> list[str]:
    data = state / "s3"
    data.mkdir(parents=True, exist_ok=True)
    return [
        str(weed_bin),
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports.weed_master}",
        f"-master.port.grpc={ports.weed_master_grpc}",
        "-master.volumeSizeLimitMB=256",
        f"-volume.port={ports.weed_volume}",
        f"-volume.port.grpc={ports.weed_volume_grpc}",
        "-volume.max=0",
        "-volume.preStopSeconds=0",  # no cluster to drain from: stop at once on SIGTERM
        f"-filer.port={ports.weed_filer}",
        f"-filer.port.grpc={ports.weed_filer_grpc}",
        "-s3",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={identities}",
    ]


def kubelet_stream(bin_dir: Path, pki: Pki, state: Path, ports: Ports) -> list[str]:
    """The emulated node's kubelet endpoint: port-forward and container logs, served from
    the emulator's pod directories, to clients with a cert from the cluster CA."""
    return [
        str(bin_dir / "kubeletstream"),
        f"--listen=127.0.0.1:{ports.kubelet}",
        f"--tls-cert-file={pki.kubelet.cert}",
        f"--tls-private-key-file={pki.kubelet.key}",
        f"--client-ca-file={pki.ca.cert}",
        f"--pods-dir={state / 'node' / 'pods'}",
    ]


def node_emulator(
    python: Path,
    script: Path,
    kubeconfig: Path,
    node_name: str,
    state: Path,
    cpu: str | None = None,
    kubelet_port: int | None = None,
) -> list[str]:
    return [
        str(python),
        str(script),
        f"--kubeconfig={kubeconfig}",
        f"--node-name={node_name}",
        f"--state-dir={state / 'node'}",
        *([f"--cpu={cpu}"] if cpu else []),
        *([f"--kubelet-port={kubelet_port}"] if kubelet_port else []),
    ]
