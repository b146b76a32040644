"""What ``testcluster up --kueue`` registers, built from the kueue module in the Go module
cache (no cluster): the webhooks Kueue serves with the pod and deployment integrations, on
loopback, with the namespaces it must leave alone; the CRDs' conversion webhook; its
Configuration. Skipped without `go` (the module comes from the Go module cache or proxy).

    .venv/bin/pytest tests/cluster/test_kueue_setup.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from clusterlib import kueue  # noqa: E402

URL = "https://127.0.0.1:40001"


@pytest.fixture(scope="module")
def module() -> Path:
    if shutil.which("go") is None:
        pytest.skip("no `go` on PATH: the kueue module comes from the Go module cache")
    return kueue.module_dir()


def test_the_module_is_the_pinned_release(module: Path) -> None:
    assert module.name == f"kueue@{kueue.version()}"
    assert kueue.version() == "v0.17.0"


def test_webhooks_are_those_kueue_serves_on_loopback(module: Path) -> None:
    configs = kueue.webhook_configurations(module, URL, "Q0E=")
    assert {c["metadata"]["name"] for c in configs} == set(kueue.WEBHOOK_CONFIGS.values())
    hooks = [w for c in configs for w in c["webhooks"]]
    names = {w["name"] for w in hooks}
    # The pod and deployment integrations and Kueue's own kinds; no batch/job, no jobset...
    assert {"mpod.kb.io", "vpod.kb.io", "mdeployment.kb.io", "vdeployment.kb.io"} <= names
    assert {"mclusterqueue.kb.io", "vclusterqueue.kb.io", "mresourceflavor.kb.io"} <= names
    assert not names & {"mjob.kb.io", "vjob.kb.io", "mjobset.kb.io", "mstatefulset.kb.io"}
    for hook in hooks:
        assert hook["clientConfig"]["url"].startswith(f"{URL}/"), hook
        assert hook["clientConfig"]["caBundle"] == "Q0E="
        assert "service" not in hook["clientConfig"]
    pod_based = [w for w in hooks if w["name"][1:] in ("pod.kb.io", "deployment.kb.io")]
    assert len(pod_based) == 4
    for hook in pod_based:
        (expr,) = hook["namespaceSelector"]["matchExpressions"]
        assert expr["operator"] == "NotIn"
        assert {"kube-system", "kubemap-system", "kueue-system"} <= set(expr["values"])
    mpod = next(w for w in hooks if w["name"] == "mpod.kb.io")
    assert mpod["clientConfig"]["url"] == f"{URL}/mutate--v1-pod"


def test_converted_crds_call_the_manager_on_loopback(module: Path) -> None:
    crds = {c["spec"]["names"]["plural"]: c for c in kueue.crds(module, URL, "Q0E=")}
    assert {"localqueues", "clusterqueues", "resourceflavors", "workloads"} <= set(crds)
    for plural, crd in crds.items():
        conversion = crd["spec"].get("conversion")
        if plural in kueue.CONVERTED_CRDS:
            assert conversion["webhook"]["clientConfig"] == {
                "url": f"{URL}/convert",
                "caBundle": "Q0E=",
            }
        else:
            assert conversion is None, plural
    storage = [v["name"] for v in crds["clusterqueues"]["spec"]["versions"] if v["storage"]]
    assert storage == ["v1beta2"]


def test_configuration_binds_loopback_and_manages_only_labelled_pods(tmp_path: Path) -> None:
    ports = {"kueue_webhook": 1, "kueue_metrics": 2, "kueue_health": 3}
    config = kueue.configuration(tmp_path, ports)
    assert config["apiVersion"] == "config.kueue.x-k8s.io/v1beta2"
    assert config["internalCertManagement"] == {"enable": False}
    assert config["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": str(tmp_path)}
    assert config["metrics"]["bindAddress"] == "127.0.0.1:2"
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:3"
    assert config["manageJobsWithoutQueueName"] is False
    assert set(config["integrations"]["frameworks"]) == {"pod", "deployment"}
    assert config["managedJobsNamespaceSelector"] == kueue.namespace_selector()
