"""Kueue on the test cluster: ``testcluster up --kueue`` (or KUBEMAP_TESTCLUSTER_KUEUE=1).

The manager is the upstream release (``go install sigs.k8s.io/kueue/cmd/kueue@<VERSION>``,
built by build.sh with the other binaries) run as a process against the test API server,
the way Kueue's integration tests run it against a local kube-apiserver:

* its CRDs and webhook configurations come from the same release's module in the Go module
  cache (config/components/crd/bases, config/components/webhook/manifests.yaml), with what
  kustomize and cert-manager add in a real install done here instead: the conversion webhook
  of the CRDs that have one, the ``kueue-`` name prefix, the pod-based webhooks' namespace
  selector (the Configuration's managedJobsNamespaceSelector, as Kueue's chart does), and
  every clientConfig pointed at ``https://127.0.0.1:<port>`` with the cluster CA's bundle;
* ``internalCertManagement.enable: false``: its webhook serves a certificate for 127.0.0.1
  signed by the cluster CA from ``webhook.certDir``, no Secret, no Service, no cert rotation;
* every listener on loopback at a free port (webhook, metrics, health); no leader election;
  the visibility API server (an aggregated API server whose certificate path is fixed at
  /visibility) is off;
* the metrics server's certificate path is fixed in cmd/kueue/main.go when internal cert
  management is off: /etc/kueue/metrics/certs/tls.{crt,key}. ``up`` writes a self-signed
  pair there when none is present (shared by every cluster on the machine, left by ``down``).

Only the ``pod`` and ``deployment`` integrations are on (FRAMEWORKS), and only for pods that
carry ``kueue.x-k8s.io/queue-name`` (manageJobsWithoutQueueName: false). kube-system,
kubemap-system and kueue-system are never managed.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import kube, pki, procs
from .state import CLUSTER_DIR, NAMESPACE, ClusterState

ENV = "KUBEMAP_TESTCLUSTER_KUEUE"
VERSION_FILE = CLUSTER_DIR / "kueue" / "VERSION"
KUEUE_NAMESPACE = "kueue-system"
UNMANAGED_NAMESPACES = ("kube-system", NAMESPACE, KUEUE_NAMESPACE)
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ADMISSION_GATE = "kueue.x-k8s.io/admission"
# Integrations -> the (apiGroup, resource) their webhooks admit. Webhooks of integrations that
# are off are not registered: Kueue serves no handler for them.
FRAMEWORKS = {"pod": ("", "pods"), "deployment": ("apps", "deployments")}
KUEUE_GROUP = "kueue.x-k8s.io"
# CRDs whose versions Kueue converts (config/components/crd/kustomization.yaml's patches).
CONVERTED_CRDS = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
WEBHOOK_CONFIGS = {
    "MutatingWebhookConfiguration": "kueue-mutating-webhook-configuration",
    "ValidatingWebhookConfiguration": "kueue-validating-webhook-configuration",
}
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")  # cmd/kueue/main.go, fixed
PORTS = ("kueue_webhook", "kueue_metrics", "kueue_health")


class KueueError(RuntimeError):
    """Kueue cannot be set up here; the message says why and what to do."""


def wanted() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def version() -> str:
    return VERSION_FILE.read_text().strip()


def module_dir() -> Path:
    """The kueue module of VERSION in the Go module cache (build.sh's `go install` put it
    there; `go mod download` reads the cache and fetches only when it is missing)."""
    mod = f"sigs.k8s.io/kueue@{version()}"
    env = {**os.environ, "GOFLAGS": ""}
    run = subprocess.run(
        ["go", "mod", "download", "-json", mod],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),  # outside any module: no go.mod of ours is consulted
    )
    if run.returncode != 0:
        raise KueueError(f"`go mod download {mod}` failed: {run.stderr.strip() or run.stdout}")
    d = Path(json.loads(run.stdout)["Dir"])
    if not (d / "config" / "components" / "crd" / "bases").is_dir():
        raise KueueError(f"{d} has no config/components/crd/bases: not a kueue module?")
    return d


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def crds(module: Path, webhook_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """The release's CRDs; the converted ones call the manager's /convert on loopback."""
    out = []
    for path in sorted((module / "config" / "components" / "crd" / "bases").glob("*.yaml")):
        for crd in _docs(path):
            if crd["spec"]["names"]["plural"] in CONVERTED_CRDS:
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "clientConfig": {"url": f"{webhook_url}/convert", "caBundle": ca_bundle},
                        "conversionReviewVersions": ["v1"],
                    },
                }
            out.append(crd)
    return out


def namespace_selector() -> dict[str, Any]:
    return {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": list(UNMANAGED_NAMESPACES),
            }
        ]
    }


def _served(webhook: dict[str, Any]) -> tuple[bool, bool]:
    """(Kueue serves it with FRAMEWORKS on, it admits a pod-based integration's objects)."""
    targets = {
        (group, resource)
        for rule in webhook.get("rules", [])
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
    }
    own = all(group == KUEUE_GROUP for group, _ in targets)
    framework = targets <= set(FRAMEWORKS.values())
    return own or framework, framework and not own


def webhook_configurations(module: Path, webhook_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """The release's mutating and validating webhook configurations, as kustomize would make
    them (name prefix, namespace selectors), served at ``webhook_url``."""
    path = module / "config" / "components" / "webhook" / "manifests.yaml"
    out = []
    for config in _docs(path):
        kind = config["kind"]
        if kind not in WEBHOOK_CONFIGS:
            continue
        kept = []
        for webhook in config.get("webhooks", []):
            served, pod_based = _served(webhook)
            if not served:
                continue
            route = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": f"{webhook_url}{route}", "caBundle": ca_bundle}
            if pod_based:
                webhook["namespaceSelector"] = namespace_selector()
            kept.append(webhook)
        config["metadata"] = {"name": WEBHOOK_CONFIGS[kind]}
        config["webhooks"] = kept
        out.append(config)
    return out


def configuration(cert_dir: Path, ports: dict[str, int]) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for a manager on loopback."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['kueue_health']}"},
        "metrics": {"bindAddress": f"127.0.0.1:{ports['kueue_metrics']}"},
        "webhook": {"host": "127.0.0.1", "port": ports["kueue_webhook"], "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": namespace_selector(),
        "integrations": {"frameworks": list(FRAMEWORKS)},
        # An aggregated API server whose certificates are read from /visibility when internal
        # cert management is off; nothing here uses it.
        "featureGates": {"VisibilityOnDemand": False},
    }


def ensure_metrics_cert() -> None:
    """A self-signed pair at the metrics path main.go fixes, unless one is there already."""
    cert, key = METRICS_CERT_DIR / "tls.crt", METRICS_CERT_DIR / "tls.key"
    if cert.is_file() and key.is_file():
        return
    try:
        METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=METRICS_CERT_DIR) as tmp:
            pair = pki.self_signed_serving_cert(
                Path(tmp), "tls", "kueue-metrics (kubemap test cluster)", ["IP:127.0.0.1"]
            )
            pair.key.replace(key)
            pair.cert.replace(cert)
    except PermissionError as exc:
        raise KueueError(
            f"Kueue's manager reads its metrics certificate from {METRICS_CERT_DIR} (fixed in "
            "cmd/kueue/main.go when internalCertManagement is off) and it cannot be written "
            f"here ({exc}); run `up --kueue` as root once, or put tls.crt and tls.key there"
        ) from exc


def prepare(d: Path, ca: pki.KeyPair, ports: dict[str, int]) -> Path:
    """Write the webhook's serving certificate and the Configuration; return its path."""
    kdir = d / "kueue"
    certs = kdir / "webhook-certs"
    certs.mkdir(parents=True)
    # controller-runtime's webhook server reads tls.crt and tls.key from certDir.
    pair = pki.serving_cert(certs, "tls", "kueue-webhook", ["IP:127.0.0.1"], ca)
    assert pair.cert.name == "tls.crt" and pair.key.name == "tls.key"
    ensure_metrics_cert()
    config = kdir / "config.yaml"
    config.write_text(yaml.safe_dump(configuration(certs, ports), sort_keys=False))
    return config


def install(admin: Path, module: Path, ca: pki.KeyPair, webhook_port: int) -> None:
    """Create the namespace, the CRDs (wait until Established) and the webhook configurations."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    url = f"https://127.0.0.1:{webhook_port}"
    bundle = kube.b64(ca.cert)
    with kube.api_client(admin) as api:
        try:
            client.CoreV1Api(api).create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=KUEUE_NAMESPACE))
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        ext = client.ApiextensionsV1Api(api)
        names = []
        for crd in crds(module, url, bundle):
            ext.create_custom_resource_definition(crd)
            names.append(crd["metadata"]["name"])
        deadline = time.monotonic() + 60
        for name in names:
            while not _established(ext.read_custom_resource_definition(name)):
                if time.monotonic() > deadline:
                    raise KueueError(f"CRD {name} is not Established after 60s")
                time.sleep(0.2)
        reg = client.AdmissionregistrationV1Api(api)
        for config in webhook_configurations(module, url, bundle):
            if config["kind"] == "MutatingWebhookConfiguration":
                reg.create_mutating_webhook_configuration(config)
            else:
                reg.create_validating_webhook_configuration(config)


def _established(crd: Any) -> bool:
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def command(bin_dir: Path, config: Path, kubeconfig: Path) -> list[str]:
    return [
        str(bin_dir / "kueue"),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        "--zap-log-level=info",
    ]


def ready(admin: Path, health_port: int) -> bool:
    """The manager says ready (its webhook server listens) and the API server reaches it:
    a server-side dry run of a labelled pod comes back gated by Kueue's webhook."""
    from kubernetes import client

    if not kube.http_ok(f"http://127.0.0.1:{health_port}/readyz"):
        return False
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kueue-webhook-probe", "labels": {QUEUE_LABEL: "probe"}},
        "spec": {"containers": [{"name": "c", "image": "none", "command": ["true"]}]},
    }
    with kube.api_client(admin) as api:
        made = client.CoreV1Api(api).create_namespaced_pod("default", pod, dry_run="All")
    gates = [g.name for g in made.spec.scheduling_gates or []]
    return ADMISSION_GATE in gates


Start = Callable[[str, list[str], Callable[[], bool], float], Any]


def start(start_proc: Start, state: ClusterState, ca: pki.KeyPair, d: Path, bin_dir: Path) -> None:
    """Install the CRDs and webhooks, start the manager, wait until its webhook answers."""
    if not (bin_dir / "kueue").is_file():
        raise KueueError(f"no {bin_dir / 'kueue'}: build.sh did not build Kueue's manager")
    module = module_dir()
    ports = dict(zip(PORTS, procs.free_ports(len(PORTS)), strict=True))
    state.ports.update(ports)
    state.save(d)
    config = prepare(d, ca, ports)
    admin = Path(state.kubeconfig)
    install(admin, module, ca, ports["kueue_webhook"])
    start_proc(
        "kueue",
        command(bin_dir, config, admin),
        lambda: ready(admin, ports["kueue_health"]),
        120,
    )
