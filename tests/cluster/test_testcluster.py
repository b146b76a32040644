"""Proof that the test cluster is a real Kubernetes control plane (issue 3, "Done when").

These tests need ``KUBECONFIG`` (``eval "$(tests/cluster/testcluster env)"``); they also pass
on a kind cluster, except that the emulated node is looked for only on the test cluster.
test_clusterlib.py covers stopping by PID, with no cluster.

    .venv/bin/pytest -m e2e tests/cluster/test_testcluster.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from clusterlib.state import NAMESPACE, NODE_NAME, S3_SECRET, ClusterState, state_dir  # noqa: E402

needs_cluster = pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"),
    reason='needs KUBECONFIG: eval "$(tests/cluster/testcluster env)"',
)


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    from kubernetes import config

    with config.new_client_from_config(config_file=os.environ["KUBECONFIG"]) as client:
        yield client


@pytest.fixture
def namespace(api: Any) -> Iterator[str]:
    from kubernetes import client

    name = f"tc-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def _on_test_cluster() -> bool:
    state = ClusterState.load(state_dir())
    return state is not None and os.environ.get("KUBECONFIG") == state.kubeconfig


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {timeout:.0f}s")
        time.sleep(0.5)


# --- RBAC and ServiceAccount tokens -------------------------------------------------------------


def _grant_pod_reader(api: Any, ns: str) -> str:
    from kubernetes import client

    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        ns,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="pod-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        ns,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader-reads-pods"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=ns)],
        ),
    )
    return f"system:serviceaccount:{ns}:reader"


def _allowed(api: Any, user: str, verb: str, resource: str, ns: str) -> bool:
    from kubernetes import client

    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{ns}",
                "system:authenticated",
            ],
            resource_attributes=client.V1ResourceAttributes(
                namespace=ns, verb=verb, resource=resource
            ),
        )
    )
    return bool(client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed)


@pytest.mark.e2e
@needs_cluster
def test_access_reviews_answer_per_rbac(api: Any, namespace: str) -> None:
    user = _grant_pod_reader(api, namespace)
    assert _wait("RBAC grant visible", lambda: _allowed(api, user, "list", "pods", namespace), 10)
    assert not _allowed(api, user, "delete", "pods", namespace)
    assert not _allowed(api, user, "list", "secrets", namespace)
    assert not _allowed(api, user, "list", "pods", "default")


@pytest.mark.e2e
@needs_cluster
def test_kubectl_auth_can_i(api: Any, namespace: str) -> None:
    tools = HERE.parent / "tools" / "kube-tools"
    if not tools.is_file():
        pytest.skip("tests/tools/kube-tools is missing: no kubectl")
    bin_dir = subprocess.run(
        [sys.executable, str(tools)], capture_output=True, text=True, check=True
    )
    kubectl = str(Path(bin_dir.stdout.strip().splitlines()[-1]) / "kubectl")
    user = _grant_pod_reader(api, namespace)

    def can_i(*args: str) -> str:
        run = subprocess.run(
            [kubectl, "auth", "can-i", *args, f"--as={user}"], capture_output=True, text=True
        )
        return run.stdout.strip()

    assert _wait(
        "kubectl sees the grant", lambda: can_i("list", "pods", "-n", namespace) == "yes", 10
    )
    assert can_i("delete", "pods", "-n", namespace) == "no"
    assert can_i("get", "secrets", "-n", namespace) == "no"


@pytest.mark.e2e
@needs_cluster
def test_service_account_token_is_issued_and_enforced(api: Any, namespace: str) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    _grant_pod_reader(api, namespace)
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token("reader", namespace, request)
        .status.token
    )
    config = client.Configuration()
    config.host = api.configuration.host
    config.ssl_ca_cert = api.configuration.ssl_ca_cert
    config.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(config) as as_reader:
        core = client.CoreV1Api(as_reader)
        _wait(
            "token accepted for pods", lambda: core.list_namespaced_pod(namespace).items == [], 10
        )
        with pytest.raises(ApiException) as denied:
            core.list_namespaced_secret(namespace)
        assert denied.value.status == 403


# --- PodSecurity admission ----------------------------------------------------------------------


def _pod(name: str, security: dict[str, Any], container_security: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "securityContext": security,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["true"],
                    "securityContext": container_security,
                }
            ],
        },
    }


@pytest.mark.e2e
@needs_cluster
def test_restricted_namespace_rejects_privileged_pod(api: Any, namespace: str) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api)
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    privileged = _pod("privileged", {}, {"privileged": True})
    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(namespace, privileged, dry_run="All")
    assert rejected.value.status == 403
    message = json.loads(rejected.value.body)["message"]
    assert 'violates PodSecurity "restricted:' in message, message
    assert "privileged (container" in message, message
    restricted = _pod(
        "restricted",
        {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    )
    created = core.create_namespaced_pod(namespace, restricted, dry_run="All")
    assert created.metadata.name == "restricted"


# --- the node and the controllers ---------------------------------------------------------------


@pytest.mark.e2e
@needs_cluster
def test_a_node_is_ready(api: Any) -> None:
    from kubernetes import client

    nodes = client.CoreV1Api(api).list_node().items
    ready = {
        n.metadata.name
        for n in nodes
        if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
    }
    if _on_test_cluster():
        if not (HERE / "node_emulator.py").is_file():
            pytest.skip("tests/cluster/node_emulator.py does not exist yet")
        assert NODE_NAME in ready
    assert ready, f"no Ready node among {[n.metadata.name for n in nodes]}"


@pytest.mark.e2e
@needs_cluster
def test_indexed_job_runs_to_completion_and_is_garbage_collected(api: Any, namespace: str) -> None:
    from kubernetes import client

    if _on_test_cluster() and not (HERE / "node_emulator.py").is_file():
        pytest.skip("tests/cluster/node_emulator.py does not exist yet: nothing runs pods")
    _wait("default ServiceAccount", lambda: _has_default_sa(api, namespace), 30)
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "indexed"},
        "spec": {
            "completions": 4,
            "parallelism": 2,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox",
                            # The job controller sets JOB_COMPLETION_INDEX; an unset one fails the pod.
                            "command": [
                                "sh",
                                "-c",
                                'test -n "$JOB_COMPLETION_INDEX" && echo "index $JOB_COMPLETION_INDEX"',
                            ],
                        }
                    ],
                }
            },
        },
    }
    batch.create_namespaced_job(namespace, job)

    def finished() -> Any:
        status = batch.read_namespaced_job_status("indexed", namespace).status
        done = {c.type for c in status.conditions or [] if c.status == "True"}
        assert "Failed" not in done, f"the Job failed: {status}"
        return status if "Complete" in done else None

    status = _wait("Indexed Job Complete", finished, 120)
    assert status.succeeded == 4
    assert status.completed_indexes == "0-3"
    pods = core.list_namespaced_pod(
        namespace, label_selector="batch.kubernetes.io/job-name=indexed"
    ).items
    assert {p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods} >= {
        "0",
        "1",
        "2",
        "3",
    }
    assert all(p.status.phase == "Succeeded" for p in pods)

    batch.delete_namespaced_job("indexed", namespace, propagation_policy="Background")
    _wait(
        "garbage collector removes the Job's pods",
        lambda: (
            not core.list_namespaced_pod(
                namespace, label_selector="batch.kubernetes.io/job-name=indexed"
            ).items
        ),
        60,
    )


def _has_default_sa(api: Any, ns: str) -> bool:
    from kubernetes import client

    return any(
        sa.metadata.name == "default"
        for sa in client.CoreV1Api(api).list_namespaced_service_account(ns).items
    )


# --- S3 and the bootstrap objects ---------------------------------------------------------------


@pytest.mark.e2e
@needs_cluster
def test_s3_credentials_secret_and_signed_s3(api: Any) -> None:
    import base64

    import boto3
    from botocore.exceptions import ClientError
    from kubernetes import client

    if not os.environ.get("AWS_ENDPOINT_URL_S3"):
        pytest.skip("no AWS_ENDPOINT_URL_S3: not the test cluster's environment")
    for ns in (NAMESPACE, "default"):
        data = client.CoreV1Api(api).read_namespaced_secret(S3_SECRET, ns).data
        assert (
            base64.b64decode(data["AWS_ACCESS_KEY_ID"]).decode() == os.environ["AWS_ACCESS_KEY_ID"]
        )
        assert (
            base64.b64decode(data["AWS_SECRET_ACCESS_KEY"]).decode()
            == os.environ["AWS_SECRET_ACCESS_KEY"]
        )
    bucket = os.environ["KUBEMAP_STORE"].removeprefix("s3://").split("/")[0]
    boto3.client("s3").head_bucket(Bucket=bucket)  # endpoint, keys and region from the env
    wrong = boto3.client(
        "s3",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key="not-the-secret",
    )
    with pytest.raises(ClientError):
        wrong.head_bucket(Bucket=bucket)


@pytest.mark.e2e
@needs_cluster
def test_up_refuses_while_up() -> None:
    if not _on_test_cluster():
        pytest.skip("KUBECONFIG is not the test cluster's")
    run = subprocess.run(
        [str(HERE / "testcluster"), "up"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert "already up" in run.stderr
