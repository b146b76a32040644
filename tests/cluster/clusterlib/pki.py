"""Certificates and keys for the test cluster, made with the ``openssl`` command line.

One CA signs the API server's serving certificate, the node emulator's kubelet endpoint's
(``kubelet``) and every client certificate. Client
identities follow Kubernetes' conventions: the common name is the user, each organisation
a group, so ``O=system:masters`` makes the admin and ``CN=system:kube-controller-manager``
matches the controller manager's bootstrap RBAC role.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SERVING_SANS = (
    "IP:127.0.0.1",
    "IP:10.0.0.1",  # the `kubernetes` Service's cluster IP in --service-cluster-ip-range
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    front_proxy_ca: KeyPair  # the aggregation layer's own CA (requestheader authentication)
    front_proxy_client: KeyPair
    kubelet: KeyPair  # serves the emulator's kubelet endpoint (kubeletstream) on 127.0.0.1
    apiserver_kubelet_client: KeyPair  # the API server's client cert towards kubelets
    sa_key: Path  # signs ServiceAccount tokens (kube-apiserver, kube-controller-manager)
    sa_pub: Path  # verifies them (kube-apiserver)


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError(
            "the `openssl` command is not on PATH; install it (apt-get install openssl)"
        )
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _ec_key(path: Path) -> None:
    _openssl(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        str(path),
        cwd=path.parent,
    )


def _signed(d: Path, name: str, subject: str, extensions: list[str], ca: KeyPair) -> KeyPair:
    key, csr, cert, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    _ec_key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=d)
    ext.write_text("\n".join(extensions) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-days", "30", "-sha256", "-extfile", str(ext), "-out", str(cert),
        cwd=d,
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return KeyPair(cert=cert, key=key)


def _ca(d: Path, name: str, common_name: str) -> KeyPair:
    ca = KeyPair(cert=d / f"{name}.crt", key=d / f"{name}.key")
    _ec_key(ca.key)
    _openssl(
        "req", "-x509", "-new", "-key", str(ca.key), "-subj", f"/CN={common_name}",
        "-days", "30", "-sha256", "-out", str(ca.cert),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=d,
    )  # fmt: skip
    return ca


def serving_cert(d: Path, name: str, common_name: str, sans: Sequence[str], ca: KeyPair) -> KeyPair:
    """A serving certificate for ``sans`` (``IP:127.0.0.1``, ``DNS:...``) signed by ``ca``:
    what a webhook on loopback presents to the API server, which trusts ``ca`` for it."""
    return _signed(
        d,
        name,
        f"/CN={common_name}",
        [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth",
            "subjectAltName=" + ",".join(sans),
        ],
        ca,
    )


def self_signed_serving_cert(d: Path, name: str, common_name: str, sans: Sequence[str]) -> KeyPair:
    """A self-signed serving certificate (its own CA): for a server nothing here verifies."""
    pair = KeyPair(cert=d / f"{name}.crt", key=d / f"{name}.key")
    _ec_key(pair.key)
    _openssl(
        "req", "-x509", "-new", "-key", str(pair.key), "-subj", f"/CN={common_name}",
        "-days", "365", "-sha256", "-out", str(pair.cert),
        "-addext", "subjectAltName=" + ",".join(sans),
        "-addext", "extendedKeyUsage=serverAuth",
        cwd=d,
    )  # fmt: skip
    return pair


def make_pki(d: Path) -> Pki:
    """Write a fresh CA, serving and client certificates and the ServiceAccount key pair into ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    ca = _ca(d, "ca", "kubemap-testcluster-ca")
    front_proxy_ca = _ca(d, "front-proxy-ca", "kubemap-testcluster-front-proxy-ca")
    client = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        "extendedKeyUsage=clientAuth",
    ]
    apiserver = _signed(
        d,
        "apiserver",
        "/CN=kube-apiserver",
        [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth",
            "subjectAltName=" + ",".join(SERVING_SANS),
        ],
        ca,
    )
    admin = _signed(d, "admin", "/O=system:masters/CN=kubemap-testcluster-admin", client, ca)
    kcm = _signed(d, "controller-manager", "/CN=system:kube-controller-manager", client, ca)
    front_proxy_client = _signed(
        d, "front-proxy-client", "/CN=front-proxy-client", client, front_proxy_ca
    )
    kubelet = serving_cert(d, "kubelet", "kubemap-node-0", ("IP:127.0.0.1",), ca)
    kubelet_client = _signed(
        d, "apiserver-kubelet-client", "/CN=kube-apiserver-kubelet-client", client, ca
    )
    sa_key, sa_pub = d / "sa.key", d / "sa.pub"
    _openssl(
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        str(sa_key),
        cwd=d,
    )
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub), cwd=d)
    return Pki(
        ca=ca,
        apiserver=apiserver,
        admin=admin,
        controller_manager=kcm,
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=front_proxy_client,
        kubelet=kubelet,
        apiserver_kubelet_client=kubelet_client,
        sa_key=sa_key,
        sa_pub=sa_pub,
    )
