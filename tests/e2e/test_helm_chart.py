"""The Helm chart installed on a real API server (the test cluster, or kind via `make e2e`).

Needs KUBECONFIG pointing at a cluster where kubemap was installed with charts/kubemap as
release "kubemap" in namespace "kubemap-system" (`tests/cluster/testcluster up` does this;
`eval "$(tests/cluster/testcluster env)"` sets KUBECONFIG). Checks: the rendered manifests
pass server-side dry-run; the operator runs under the chart's ServiceAccount and RBAC is
enforced on it; worker pods are admitted where the "restricted" Pod Security Standard is
enforced; the MapTask examples run to completion.

(Named test_helm_chart.py, not test_chart.py: tests/unit/test_chart.py has that basename and
pytest's default import mode cannot collect two same-named modules in one session.)
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import chartkit as ck

pytestmark = pytest.mark.e2e

RELEASE, NAMESPACE, SA = "kubemap", "kubemap-system", "kubemap"
EXAMPLES = ck.REPO / "examples"
TASK_TIMEOUT = float(os.environ.get("KUBEMAP_E2E_TASK_TIMEOUT", "240"))


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip('KUBECONFIG is not set: run `eval "$(tests/cluster/testcluster env)"` first')
    if (
        kubectl(
            "get",
            "deployment",
            "-n",
            NAMESPACE,
            "-l",
            f"app.kubernetes.io/instance={RELEASE}",
            "-o",
            "name",
        ).stdout.strip()
        == ""
    ):
        pytest.fail(
            f"kubemap is not installed in {NAMESPACE} (helm install {RELEASE} charts/kubemap)"
        )


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> ck.Run:
    done = ck.run([ck.kubectl_bin(), *args], stdin=stdin, timeout=180)
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def get_json(*args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def installed_values() -> str:
    done = ck.run([ck.helm_bin(), "get", "values", RELEASE, "-n", NAMESPACE, "-o", "yaml"])
    assert done.returncode == 0, done.stderr
    return done.stdout


def watched_namespaces() -> list[str]:
    env = ck.container_env(
        get_json("deployment", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")[
            "items"
        ][0]
    )
    return [ns for ns in env.get("KUBEMAP_WATCH_NAMESPACES", "").split(",") if ns]


@pytest.fixture
def task_namespace() -> Iterator[str]:
    """A fresh namespace with the kubemap-s3 Secret (copied from the release namespace)."""
    yield from _namespace({})


@pytest.fixture
def restricted_namespace() -> Iterator[str]:
    yield from _namespace(
        {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
    )


def _namespace(labels: dict[str, str]) -> Iterator[str]:
    if watched_namespaces():
        pytest.skip("the installed operator watches only " + ",".join(watched_namespaces()))
    name = f"kubemap-e2e-{uuid.uuid4().hex[:8]}"
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    source = get_json("secret", "kubemap-s3", "-n", NAMESPACE)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": "kubemap-s3", "namespace": name},
        "data": source["data"],
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(secret))
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def wait_for_phase(name: str, namespace: str, phases: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + TASK_TIMEOUT
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        task = get_json("maptask", name, "-n", namespace)
        if (task.get("status") or {}).get("phase") in phases:
            return task
        time.sleep(1)
    pods = kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
    events = kubectl("get", "events", "-n", namespace, check=False).stdout
    logs = kubectl("logs", "-n", NAMESPACE, f"deployment/{RELEASE}", "--tail=40", check=False)
    raise AssertionError(
        f"MapTask {namespace}/{name} not in {phases} after {TASK_TIMEOUT}s: status={task.get('status')}\n"
        f"pods:\n{pods}\nevents:\n{events}\noperator log:\n{logs.stdout}{logs.stderr}"
    )


# --- the manifests against the real API server ---------------------------------------------------


DRY_RUN_OPTION_SETS = {
    "installed": {},
    "namespaced-rbac": {
        "rbac.scope": "namespaced",
        "operator.watchNamespaces": "{kubemap-system,default}",
    },
    "created-secret-and-metrics": {
        "s3.existingSecret": "",
        "s3.accessKeyId": "a",
        "s3.secretAccessKey": "b",
        "metrics.service.enabled": "true",
        "metrics.grafanaDashboard.enabled": "true",  # the dashboard's ConfigMap is admitted
    },
}


@pytest.mark.parametrize("name", sorted(DRY_RUN_OPTION_SETS))
def test_rendered_manifests_pass_server_side_dry_run(name: str, tmp_path: Path) -> None:
    values = tmp_path / "installed-values.yaml"
    values.write_text(installed_values())
    release = RELEASE if name == "installed" else f"{RELEASE}-dryrun"
    done = ck.helm_template(DRY_RUN_OPTION_SETS[name], release=release, extra=["-f", str(values)])
    assert done.returncode == 0, done.stderr
    # No -n: every namespaced object the chart renders names its namespace.
    applied = kubectl("apply", "--dry-run=server", "-f", "-", stdin=done.stdout)
    kinds = {line.split("/")[0] for line in applied.stdout.splitlines()}
    assert "deployment.apps" in kinds


@pytest.mark.parametrize(
    "path",
    [*sorted(EXAMPLES.glob("*.yaml")), EXAMPLES / "kind" / "seaweedfs.yaml"],
    ids=lambda p: p.name,
)
def test_example_manifests_pass_client_and_server_dry_run(path: Path) -> None:
    namespaced = any(d["metadata"].get("namespace") for d in ck.load_yaml_docs(path))
    target = [] if namespaced else ["-n", "default"]
    for mode in ("client", "server"):
        kubectl("apply", f"--dry-run={mode}", *target, "-f", str(path))


# --- the operator under its ServiceAccount and RBAC ----------------------------------------------


def test_operator_pod_runs_under_the_charts_service_account() -> None:
    selector = f"app.kubernetes.io/name=kubemap,app.kubernetes.io/instance={RELEASE}"
    [pod] = get_json("pods", "-n", NAMESPACE, "-l", selector)["items"]
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["serviceAccountName"] == SA
    assert {"app.kubernetes.io/version", "app.kubernetes.io/managed-by"} <= set(
        pod["metadata"]["labels"]
    )
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "kubemap_operator"]
    deployment = get_json("deployment", RELEASE, "-n", NAMESPACE)
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert deployment["status"].get("availableReplicas") == 1


def access(
    verb: str,
    resource: str,
    namespace: str = "default",
    group: str = "",
    sub: str = "",
    account: tuple[str, str] = (NAMESPACE, SA),
) -> bool:
    """SubjectAccessReview: may the ServiceAccount `account` (namespace, name) do this?"""
    sa_namespace, sa_name = account
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{sa_namespace}:{sa_name}",
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{sa_namespace}",
                "system:authenticated",
            ],
            "resourceAttributes": {
                "verb": verb,
                "resource": resource,
                "namespace": namespace,
                "group": group,
                "subresource": sub,
            },
        },
    }
    done = kubectl("create", "-f", "-", "-o", "json", stdin=json.dumps(review))
    return bool(json.loads(done.stdout)["status"]["allowed"])


@pytest.mark.parametrize(
    ("verb", "resource", "group", "sub", "allowed"),
    [
        ("create", "pods", "", "", True),
        ("delete", "pods", "", "", True),
        ("watch", "maptasks", "kubemap.io", "", True),
        ("patch", "maptasks", "kubemap.io", "status", True),
        ("create", "events", "", "", True),
        ("get", "secrets", "", "", False),
        ("list", "secrets", "", "", False),
        ("get", "pods", "", "log", True),  # logkeeper: a failed pod's log tail
        ("create", "configmaps", "", "", True),  # ...kept in <task>-logs
        ("delete", "configmaps", "", "", False),
        ("list", "configmaps", "", "", False),
        ("delete", "maptasks", "kubemap.io", "", True),
        ("create", "maptasks", "kubemap.io", "", False),
        ("create", "customresourcedefinitions", "apiextensions.k8s.io", "", False),
        # Warm pools (pools.enabled, the default): each pool's workers are a Deployment, and
        # its token Secret is written but never read back.
        ("create", "deployments", "apps", "", True),
        ("delete", "deployments", "apps", "", False),
        ("create", "secrets", "", "", True),
        ("watch", "secrets", "", "", False),
        ("patch", "workerpools", "kubemap.io", "status", True),
        ("create", "workerpools", "kubemap.io", "", False),
    ],
)
def test_subject_access_review_of_the_operator(
    verb: str, resource: str, group: str, sub: str, allowed: bool
) -> None:
    assert access(verb, resource, group=group, sub=sub) is allowed
    assert access(verb, resource, namespace=NAMESPACE, group=group, sub=sub) is allowed


def test_rbac_is_enforced_on_requests_with_the_service_account_token() -> None:
    token = kubectl("create", "token", SA, "-n", NAMESPACE, "--duration=10m").stdout.strip()
    server = kubectl(
        "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"
    ).stdout
    config = yaml.safe_load(kubectl("config", "view", "--minify", "--raw", "-o", "yaml").stdout)
    ca = config["clusters"][0]["cluster"].get("certificate-authority-data")
    ca_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"kubemap-e2e-ca-{uuid.uuid4().hex}.crt"
    flags = ["--server", server, "--token", token, "--kubeconfig", "/dev/null"]
    if ca:
        ca_file.write_bytes(base64.b64decode(ca))
        flags += ["--certificate-authority", str(ca_file)]
    else:
        flags += ["--insecure-skip-tls-verify"]
    try:
        as_operator = [ck.kubectl_bin(), *flags]
        pods = ck.run([*as_operator, "get", "pods", "-n", NAMESPACE])
        assert pods.returncode == 0, pods.stderr
        secrets = ck.run([*as_operator, "get", "secrets", "-n", NAMESPACE])
        assert secrets.returncode != 0 and "forbidden" in secrets.stderr.lower(), secrets.stderr
    finally:
        ca_file.unlink(missing_ok=True)


def test_namespaced_release_grants_only_its_namespace(task_namespace: str) -> None:
    """A second, paused release with rbac.scope=namespaced: a Role in the watched namespace
    and nothing cluster-wide, as the API server's authorizer sees it."""
    release = "kubemap-scoped"
    sets = {
        "rbac.scope": "namespaced",
        "operator.watchNamespaces": "{" + task_namespace + "}",
        "crds.enabled": "false",
        "replicaCount": "0",
    }
    install = ck.run(
        [ck.helm_bin(), "install", release, str(ck.CHART), "-n", task_namespace, "--wait",
         "--timeout", "120s", *ck.set_args(sets)],
        timeout=180,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    try:
        account = (task_namespace, release)
        assert kubectl("get", "role", release, "-n", task_namespace, "-o", "name").stdout.strip()
        missing = kubectl("get", "clusterrole", release, check=False)
        assert missing.returncode != 0 and "NotFound" in missing.stderr
        assert access("create", "pods", task_namespace, account=account)
        assert access("patch", "maptasks", task_namespace, "kubemap.io", "status", account=account)
        assert not access("create", "pods", "default", account=account)
        assert not access("list", "maptasks", "default", "kubemap.io", account=account)
        assert not access("get", "secrets", task_namespace, account=account)
    finally:
        ck.run([ck.helm_bin(), "uninstall", release, "-n", task_namespace, "--wait"], timeout=180)


# --- worker pods under the restricted Pod Security Standard, and the examples -------------------


def test_restricted_namespace_rejects_an_unrestricted_pod(restricted_namespace: str) -> None:
    """The control for the next test: the namespace really enforces "restricted"."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["true"]}]},
    }
    done = kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        restricted_namespace,
        "-f",
        "-",
        stdin=json.dumps(pod),
        check=False,
    )
    assert done.returncode != 0 and "violates PodSecurity" in done.stderr, done.stderr


def test_worker_pods_are_admitted_in_a_restricted_namespace(restricted_namespace: str) -> None:
    kubectl("apply", "-n", restricted_namespace, "-f", str(EXAMPLES / "maptask-items.yaml"))
    task = wait_for_phase("hello-items", restricted_namespace, {"Succeeded", "Failed"})
    status = task["status"]
    assert status["phase"] == "Succeeded", status
    assert (status["total"], status["succeeded"], status["failed"]) == (3, 3, 0)
    assert status["succeededIndexes"] == "0-2"
    events = kubectl("get", "events", "-n", restricted_namespace, "-o", "json").stdout
    assert "violates PodSecurity" not in events


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("maptask-*.yaml")), ids=lambda p: p.name)
def test_example_maptask_runs_to_completion(path: Path, task_namespace: str) -> None:
    [doc] = ck.load_yaml_docs(path)
    kubectl("apply", "-n", task_namespace, "-f", str(path))
    task = wait_for_phase(doc["metadata"]["name"], task_namespace, {"Succeeded", "Failed"})
    status = task["status"]
    total = len(doc["spec"]["items"]) if "items" in doc["spec"] else doc["spec"]["count"]
    assert status["phase"] == "Succeeded", status
    assert (status["total"], status["succeeded"]) == (total, total)


def test_function_mode_example_runs_through_the_chart_install(
    task_namespace: str, tmp_path: Path
) -> None:
    """examples/square.py on the cluster: the SDK uploads to S3, the chart's worker image and
    S3 settings (KUBEMAP_S3_ENDPOINT, the kubemap-s3 Secret) carry the pods."""
    store = os.environ.get("KUBEMAP_STORE")
    if not store or not store.startswith("s3://"):
        pytest.skip(
            'KUBEMAP_STORE (s3://...) is not set: run `eval "$(tests/cluster/testcluster env)"`'
        )
    done = ck.run(
        [sys.executable, "-m", "kubemap", "run", str(EXAMPLES / "square.py") + ":square",
         "--inputs", "-", "--backend", "kubernetes", "--namespace", task_namespace,
         "--store", store, "--parallelism", "3", "--no-progress", "--timeout", str(TASK_TIMEOUT)],
        stdin="\n".join(str(i) for i in range(1, 7)) + "\n",
        timeout=TASK_TIMEOUT + 60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [i * i for i in range(1, 7)]


def test_the_maptask_in_the_install_notes_runs(task_namespace: str) -> None:
    notes = ck.run([ck.helm_bin(), "get", "notes", RELEASE, "-n", NAMESPACE])
    assert notes.returncode == 0, notes.stderr
    body = notes.stdout.split("kubectl apply -f - <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    name = yaml.safe_load(body)["metadata"]["name"]
    kubectl("apply", "-n", task_namespace, "-f", "-", stdin=body)
    status = wait_for_phase(name, task_namespace, {"Succeeded", "Failed"})["status"]
    assert status["phase"] == "Succeeded", status


def test_upgrade_of_the_installed_release_passes_server_dry_run() -> None:
    upgrade = ck.run(
        [ck.helm_bin(), "upgrade", RELEASE, str(ck.CHART), "-n", NAMESPACE, "--reuse-values",
         "--set", "operator.logLevel=DEBUG", "--dry-run=server"],
        timeout=180,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stderr
    assert "KUBEMAP_LOG_LEVEL" in upgrade.stdout and '"DEBUG"' in upgrade.stdout
