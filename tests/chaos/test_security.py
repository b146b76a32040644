"""What the operator's identity may not do, worker pods under the restricted Pod Security
Standard, and S3 credentials kept out of every artefact a run leaves behind.

Permissions are asked of the real API server's RBAC authorizer (SubjectAccessReview for the
operator's ServiceAccount), with the rights it must have asked too, so the test cannot pass
by talking about the wrong user.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import kubemap
import pytest
from chaoskit import report, result_objects
from faults import LiveCluster, running_operator, wait_until
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


@pytest.fixture(scope="module")
def operator_user(core: client.CoreV1Api) -> str:
    pod = running_operator(core)
    assert pod is not None
    return f"system:serviceaccount:{pod.metadata.namespace}:{pod.spec.service_account_name}"


def allowed(api: client.ApiClient, user: str, verb: str, resource: str, namespace: str = "",
            group: str = "", subresource: str = "") -> bool:  # fmt: skip
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                resource=resource,
                namespace=namespace or None,
                group=group,
                subresource=subresource or None,
            ),
        )
    )
    answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
    return bool(answer.status.allowed)


MUST = [
    ("create", "pods", "default", "", ""),
    ("delete", "pods", "default", "", ""),
    ("watch", "maptasks", "default", "kubemap.io", ""),
    ("patch", "maptasks", "default", "kubemap.io", "status"),
    ("create", "events", "default", "", ""),
    # the logs of failed container pods, kept in a ConfigMap owned by the task (logkeeper)
    ("get", "pods", "default", "", "log"),
    ("create", "configmaps", "default", "", ""),
    # warm pools: the operator runs each WorkerPool as a Deployment
    ("create", "deployments", "default", "apps", ""),
]
MUST_NOT = [
    ("get", "secrets", "default", "", ""),
    ("list", "secrets", "kubemap-system", "", ""),
    ("watch", "secrets", "", "", ""),
    ("delete", "configmaps", "kube-system", "", ""),
    ("delete", "deployments", "kube-system", "apps", ""),
    ("create", "jobs", "default", "batch", ""),
    ("create", "serviceaccounts", "default", "", "token"),
    ("create", "pods", "default", "", "exec"),
    ("create", "rolebindings", "default", "rbac.authorization.k8s.io", ""),
    ("create", "clusterrolebindings", "", "rbac.authorization.k8s.io", ""),
    ("escalate", "clusterroles", "", "rbac.authorization.k8s.io", ""),
    ("bind", "clusterroles", "", "rbac.authorization.k8s.io", ""),
    ("impersonate", "users", "", "", ""),
    ("impersonate", "serviceaccounts", "default", "", ""),
    ("create", "customresourcedefinitions", "", "apiextensions.k8s.io", ""),
    ("delete", "namespaces", "", "", ""),
    ("patch", "nodes", "", "", ""),
    ("create", "certificatesigningrequests", "", "certificates.k8s.io", ""),
]


def test_operator_service_account_has_least_privilege(
    api: client.ApiClient, operator_user: str
) -> None:
    missing = [r for r in MUST if not allowed(api, operator_user, *r)]
    assert not missing, f"{operator_user} lacks rights it needs: {missing}"
    excess = [r for r in MUST_NOT if allowed(api, operator_user, *r)]
    assert not excess, f"{operator_user} may do what it must not: {excess}"
    report(f"{operator_user}: {len(MUST)} needed rights held, {len(MUST_NOT)} denied")


@pytest.fixture
def restricted_namespace(core: client.CoreV1Api, unique: Callable[[str], str]) -> Iterator[str]:
    """A namespace enforcing the restricted Pod Security Standard, with the S3 Secret."""
    name = unique("restricted")
    labels = {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
    }
    core.create_namespace({"metadata": {"name": name, "labels": labels}})
    secret = core.read_namespaced_secret("kubemap-s3", "default")
    core.create_namespaced_secret(
        name, {"metadata": {"name": "kubemap-s3"}, "type": secret.type, "data": secret.data}
    )
    wait_until(
        "the namespace's default ServiceAccount",
        lambda: core.read_namespaced_service_account("default", name) is not None,
        60,
    )
    yield name
    core.delete_namespace(name)


def test_worker_pods_pass_the_restricted_pod_security_standard(
    restricted_namespace: str, core: client.CoreV1Api, unique: Callable[[str], str]
) -> None:
    def triple(x: int) -> int:
        return 3 * x

    results = kubemap.map(
        triple,
        range(4),
        backend="kubernetes",
        namespace=restricted_namespace,
        store=os.environ.get("KUBEMAP_STORE"),
        name=unique("pss"),
        items_per_pod=2,
    )
    assert results == [0, 3, 6, 9]
    warnings = [
        e.message
        for e in core.list_namespaced_event(restricted_namespace).items
        if "PodSecurity" in (e.message or "") or "violates" in (e.message or "")
    ]
    assert not warnings, warnings


def artefacts(cluster: LiveCluster, api: client.ApiClient) -> Iterator[tuple[str, str]]:
    """(where, text) of everything a run leaves for people to read."""
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    tasks = custom.list_cluster_custom_object("kubemap.io", "v1alpha1", "maptasks")
    for task in tasks["items"]:
        yield f"MapTask {task['metadata']['name']}", json.dumps(task)
        store = ((task.get("spec") or {}).get("store") or {}).get("url")
        if store:
            result_objects(store, task["metadata"]["name"])  # the listing works with the key
    for event in core.list_event_for_all_namespaces().items:
        yield f"Event {event.metadata.name}", json.dumps(api.sanitize_for_serialization(event))
    for pod in core.list_pod_for_all_namespaces().items:
        yield f"Pod {pod.metadata.name}", json.dumps(api.sanitize_for_serialization(pod))
    pods_dir = cluster.dir / "node" / "pods"
    for log in sorted(pods_dir.rglob("*.log")) + sorted(pods_dir.rglob("termination-log")):
        yield str(log.relative_to(cluster.dir)), log.read_text(errors="replace")
    for log in sorted((cluster.dir / "logs").glob("*.log")):
        yield str(log.relative_to(cluster.dir)), log.read_text(errors="replace")
    import boto3

    s3 = boto3.client("s3", endpoint_url=cluster.state.s3_endpoint)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="kubemap"):
        for obj in page.get("Contents", []):
            if "/errors/" in obj["Key"]:
                body = s3.get_object(Bucket="kubemap", Key=obj["Key"])["Body"].read()
                yield f"s3 {obj['Key']}", body.decode(errors="replace")


def signing_keys(api: client.ApiClient) -> list[str]:
    """The task and pool signing keys (kubemap.task.signing) of the Secrets the SDK left."""
    found = []
    for selector in ("kubemap.io/task", "kubemap.io/pool"):
        for secret in (
            client.CoreV1Api(api).list_secret_for_all_namespaces(label_selector=selector).items
        ):
            text = (secret.data or {}).get("key")
            if text:
                found.append(base64.b64decode(text).decode())
    return found


def test_s3_credentials_appear_in_no_artefact(cluster: LiveCluster, api: client.ApiClient) -> None:
    """Run last in this module: by now the chaos suite has left tasks, events, logs and
    error records behind. Secrets are read from the Secret only, never written elsewhere."""
    secrets = [cluster.state.secret_key, cluster.state.access_key, *signing_keys(api)]
    checked = 0
    leaks = []
    for where, text in artefacts(cluster, api):
        checked += 1
        leaks += [where for s in secrets if s in text]
    assert checked > 10, f"only {checked} artefacts found: the scan looked in the wrong places"
    assert not leaks, f"S3 credentials or signing keys found in: {sorted(set(leaks))}"
    report(
        f"S3 credentials and {len(secrets) - 2} signing keys searched in {checked} "
        "artefacts: found in none"
    )


def test_operator_cannot_read_the_s3_secret(cluster: LiveCluster, core: client.CoreV1Api) -> None:
    """Not only RBAC on paper: a request made with the operator's own token is refused."""
    pod = running_operator(core)
    assert pod is not None
    token = core.create_namespaced_service_account_token(
        pod.spec.service_account_name, pod.metadata.namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    conf = client.Configuration()
    conf.host = cluster.state.apiserver_url
    conf.ssl_ca_cert = str(Path(cluster.dir) / "pki" / "ca.crt")
    conf.api_key = {"authorization": f"Bearer {token}"}
    as_operator = client.CoreV1Api(client.ApiClient(conf))
    for namespace in ("default", pod.metadata.namespace):
        with pytest.raises(ApiException) as info:
            as_operator.read_namespaced_secret("kubemap-s3", namespace)
        assert info.value.status == 403
