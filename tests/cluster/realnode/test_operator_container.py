"""The operator installed by the chart, running as a real container on the real node.

A second release (``kubemap-real``, watching only its own namespace so it never competes with
the emulator's operator) with the image imported into containerd: its Deployment becomes
available, the kubelet's liveness probe of ``/healthz`` succeeds again and again (counted in
the kubelet's probe metrics), and the containerized operator, reaching the API server through
the ``kubernetes`` Service, runs a MapTask to success.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import kubemap
import pytest
import yaml
from clusterlib import helm
from clusterlib.realnode_config import GATEWAY, REAL_NODE_NAME
from clusterlib.state import S3_SECRET, STORE
from kubernetes import client
from realnodekit import IMAGE, ON_REAL_NODE, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RELEASE = NAMESPACE = "kubemap-real"
CHART = Path(__file__).resolve().parents[3] / "charts" / "kubemap"


def _probe_successes(api: client.ApiClient, pod: str) -> int:
    """Successful liveness probes of ``pod``, from the kubelet's /metrics/probes (through the
    API server's node proxy)."""
    data = api.call_api(
        f"/api/v1/nodes/{REAL_NODE_NAME}/proxy/metrics/probes", "GET",
        auth_settings=["BearerToken"], _preload_content=False,
    ).data.decode()  # fmt: skip
    total = 0
    for line in data.splitlines():
        if (
            line.startswith("prober_probe_total{")
            and 'probe_type="Liveness"' in line
            and f'pod="{pod}"' in line
            and 'result="successful"' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


@pytest.fixture(scope="module")
def release(core: client.CoreV1Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    helm_bin = helm.helm_binary()
    if helm_bin is None:
        pytest.fail("no helm: tests/tools/kube-tools installs it")
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    source = core.read_namespaced_secret(S3_SECRET, "kubemap-system")
    core.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": S3_SECRET}, "data": source.data, "type": source.type}
    )
    s3_port = re.sub(r".*:", "", os.environ["AWS_ENDPOINT_URL_S3"])
    repository, _, tag = IMAGE.rpartition(":")
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
        "operator": {"watchNamespaces": [NAMESPACE], **ON_REAL_NODE},
        "crds": {"enabled": False},  # the emulator's release installed them
        "s3": {
            "endpoint": f"http://{GATEWAY}:{s3_port}",  # S3 as pods on the real node reach it
            "defaultStore": STORE,
            "existingSecret": S3_SECRET,
        },
    }
    path = tmp_path_factory.mktemp("helm") / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    run = subprocess.run(
        [str(helm_bin), "install", RELEASE, str(CHART), "-n", NAMESPACE, "--values", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    try:
        assert run.returncode == 0, run.stderr
        yield RELEASE
    finally:
        subprocess.run(
            [str(helm_bin), "uninstall", RELEASE, "-n", NAMESPACE, "--wait"],
            capture_output=True, timeout=120,
        )  # fmt: skip
        core.delete_namespace(NAMESPACE)


def _operator_pod(core: client.CoreV1Api) -> client.V1Pod | None:
    pods = core.list_namespaced_pod(NAMESPACE).items
    ready = [
        p
        for p in pods
        if p.status.container_statuses and all(cs.ready for cs in p.status.container_statuses)
    ]
    return ready[0] if ready else None


def test_the_operator_container_becomes_available_and_stays_live(
    real_api: client.ApiClient, core: client.CoreV1Api, release: str
) -> None:
    pod = wait_for(
        "the operator pod on the real node to be ready", lambda: _operator_pod(core), 180
    )
    assert pod.spec.node_name == REAL_NODE_NAME
    assert pod.status.container_statuses[0].container_id.startswith("containerd://")
    # periodSeconds 20 in values.yaml: two successful probes after the first.
    wait_for(
        "two successful liveness probes of /healthz",
        lambda: _probe_successes(real_api, pod.metadata.name) >= 2,
        240,
    )
    again = core.read_namespaced_pod(pod.metadata.name, NAMESPACE)
    assert again.status.container_statuses[0].restart_count == 0
    assert again.status.container_statuses[0].ready


def test_the_operator_container_runs_a_task_through_the_kubernetes_service(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, release: str
) -> None:
    wait_for("the operator pod to be ready", lambda: _operator_pod(core), 300)
    name = "real-operator-task"
    body = {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": name},
        "spec": {
            "mode": "Container",
            "count": 3,
            "template": {
                "image": IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "echo index $KUBEMAP_INDEX"],
                **ON_REAL_NODE,
            },
        },
    }
    custom.create_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "maptasks", body)

    def done() -> dict[str, object] | None:
        obj = custom.get_namespaced_custom_object(
            "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name
        )
        status = obj.get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(f"MapTask {name} to finish", done, 240)
    assert status["phase"] == "Succeeded" and status["succeeded"] == 3, status


def squares_and_host(x: int) -> tuple[int, str]:
    import socket

    return x * x, socket.gethostname()


def test_the_chart_installed_operator_runs_a_function_in_real_containers(
    core: client.CoreV1Api, release: str
) -> None:
    """The whole user path on real containers: the chart's operator (a container), the SDK's
    pickled function, worker pods of the image reading S3 at the chart's s3.endpoint."""
    wait_for("the operator pod to be ready", lambda: _operator_pod(core), 300)
    run = kubemap.submit(
        squares_and_host,
        range(10),
        backend="kubernetes",
        namespace=NAMESPACE,
        store=os.environ["KUBEMAP_STORE"],
        image=IMAGE,
        items_per_pod=5,
        node_selector=ON_REAL_NODE["nodeSelector"],
        tolerations=ON_REAL_NODE["tolerations"],
    )
    results = run.results(timeout=300)
    assert [r[0] for r in results] == [x * x for x in range(10)]
    hosts = {r[1] for r in results}  # a container's hostname is its pod's name
    assert len(hosts) == 2 and all(h.startswith(f"{run.name}-") for h in hosts), hosts
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"kubemap.io/task={run.name}")
    assert all(p.spec.node_name == REAL_NODE_NAME for p in pods.items)
    run.delete()
