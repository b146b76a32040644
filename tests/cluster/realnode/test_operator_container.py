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
from collections.abc import Callable, Iterator
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


def _probe_successes(api: client.ApiClient, pod: str, kind: str = "Liveness") -> int:
    """Successful probes of ``pod`` (Liveness or Readiness), from the kubelet's
    /metrics/probes (through the API server's node proxy)."""
    data = api.call_api(
        f"/api/v1/nodes/{REAL_NODE_NAME}/proxy/metrics/probes", "GET",
        auth_settings=["BearerToken"], _preload_content=False,
    ).data.decode()  # fmt: skip
    total = 0
    for line in data.splitlines():
        if (
            line.startswith("prober_probe_total{")
            and f'probe_type="{kind}"' in line
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
    # The emulator's release watches every namespace: left running it would reconcile this
    # release's MapTasks and WorkerPools too (two operators, two pool templates, a Deployment
    # rolled back and forth). It is paused for this module and resumed after.
    resume = _pause_emulator_operator(client.AppsV1Api(core.api_client), core)
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
        try:
            # While this release's operator runs, so that it removes its finalizers.
            _delete_kubemap_objects(client.CustomObjectsApi(core.api_client))
            subprocess.run(
                [str(helm_bin), "uninstall", RELEASE, "-n", NAMESPACE, "--wait"],
                capture_output=True, timeout=120,
            )  # fmt: skip
            core.delete_namespace(NAMESPACE)
            wait_for(f"namespace {NAMESPACE} to be gone", lambda: _namespace_gone(core), 180)
        finally:
            resume()


def _delete_kubemap_objects(custom: client.CustomObjectsApi) -> None:
    for plural in ("maptasks", "workerpools"):
        custom.delete_collection_namespaced_custom_object(
            "kubemap.io", "v1alpha1", NAMESPACE, plural
        )

    def gone() -> bool:
        return not any(
            custom.list_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, p)["items"]
            for p in ("maptasks", "workerpools")
        )

    wait_for(f"the MapTasks and WorkerPools of {NAMESPACE} to be deleted", gone, 120)


EMULATOR_OPERATOR = (
    "kubemap-system",
    "app.kubernetes.io/name=kubemap,app.kubernetes.io/component=operator",
)


def _pause_emulator_operator(apps: client.AppsV1Api, core: client.CoreV1Api) -> Callable[[], None]:
    namespace, selector = EMULATOR_OPERATOR
    deployments = apps.list_namespaced_deployment(namespace, label_selector=selector).items
    assert len(deployments) == 1, [d.metadata.name for d in deployments]
    name = deployments[0].metadata.name

    def scale(replicas: int) -> None:
        apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})

    def pods() -> list[client.V1Pod]:
        return list(core.list_namespaced_pod(namespace, label_selector=selector).items)

    scale(0)
    wait_for("the emulator's operator to stop", lambda: not pods(), 120)

    def resume() -> None:
        scale(1)
        wait_for(
            "the emulator's operator to be back",
            lambda: any(cs.ready for p in pods() for cs in (p.status.container_statuses or [])),
            120,
        )

    return resume


def _namespace_gone(core: client.CoreV1Api) -> bool:
    """A deleted namespace lingers while its pods stop: the next run must not find it."""
    try:
        core.read_namespace(NAMESPACE)
    except client.ApiException as exc:
        return exc.status == 404
    return False


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
    # Readiness asks the dispatcher (pools are on by default): its Service needs it.
    assert _probe_successes(real_api, pod.metadata.name, "Readiness") >= 2
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


def test_a_warm_pool_of_real_containers_serves_two_tasks_without_a_new_pod(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, release: str
) -> None:
    """Pool workers in real containers lease work from the dispatcher inside the operator's
    container, through its Service and kube-proxy. This cluster has no DNS, so the chart is
    told the Service's address (pools.advertiseUrl), as a user without cluster DNS would."""
    service = core.read_namespaced_service(f"{release}-dispatcher", NAMESPACE)
    url = f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}"
    upgrade = subprocess.run(
        [str(helm.helm_binary()), "upgrade", release, str(CHART), "-n", NAMESPACE,
         "--reuse-values", "--set", f"pools.advertiseUrl={url}", "--wait", "--timeout", "240s"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stderr
    # Until the old operator pod is gone it still reconciles, with the old URL.
    wait_for(
        "one operator pod, the upgraded one",
        lambda: len(core.list_namespaced_pod(NAMESPACE).items) == 1 and _operator_pod(core),
        240,
    )
    name = "real-pool"
    body = {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "idleTtlSeconds": 0,
            "image": IMAGE,
            "imagePullPolicy": "IfNotPresent",
            **ON_REAL_NODE,
        },
    }
    custom.create_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "workerpools", body)
    selector = f"kubemap.io/pool={name}"

    def ready_workers() -> set[str] | None:
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
        names = {
            p.metadata.name
            for p in pods
            if p.status.container_statuses and all(cs.ready for cs in p.status.container_statuses)
        }
        return names if len(names) == 2 else None

    try:
        warm = wait_for("two ready pool workers on the real node", ready_workers, 300)
        hosts: set[str] = set()
        for _ in range(2):
            run = kubemap.submit(
                squares_and_host, range(40), backend="kubernetes", namespace=NAMESPACE,
                store=os.environ["KUBEMAP_STORE"], pool=name,
            )  # fmt: skip
            results = run.results(timeout=240)
            assert [r[0] for r in results] == [x * x for x in range(40)]
            hosts |= {r[1] for r in results}
            run.delete()
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
        assert {p.metadata.name for p in pods} == warm  # neither task started a pod
        assert hosts <= warm, (hosts, warm)  # the work ran in the pool's containers
        assert all(p.spec.node_name == REAL_NODE_NAME for p in pods)
    finally:
        custom.delete_namespaced_custom_object(
            "kubemap.io", "v1alpha1", NAMESPACE, "workerpools", name
        )
