"""Tests of the node emulator.

Unit tests (no cluster): env resolution, status building, restart rules, scheduling fit,
termination messages. The e2e tests (marked e2e) need a running test cluster:

    tests/cluster/testcluster up && eval "$(tests/cluster/testcluster env)"
    .venv/bin/pytest tests/cluster/test_node_emulator.py -m e2e
"""

from __future__ import annotations

import base64
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubelet_emu.containers import Backoff, Slot, should_restart
from kubelet_emu.envresolve import (
    EnvConfigError,
    container_argv,
    decode_secret,
    expand,
    resolve_env,
)
from kubelet_emu.podstatus import ContainerView, Terminated, pod_conditions, pod_phase, pod_status
from kubelet_emu.processes import ContainerPaths, termination_message
from kubelet_emu.quantity import parse_quantity
from kubelet_emu.sa_token import wants_token
from kubelet_emu.scheduler import Resources, pod_requests, unfit_reasons, wants_this_scheduler

# -- $(VAR) expansion, table from Kubernetes' expansion_test.go ------------------------------
MAPPING = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(VAR_A)", "A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)-$(VAR_A)", "A-A"),
        ("$(VAR_A)$(VAR_B)$(VAR_C)", "ABC"),
        ("$(VAR_EMPTY)", ""),
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("$$(VAR_A)", "$(VAR_A)"),
        ("$$$(VAR_A)", "$A"),
        ("$$$$(VAR_A)", "$$(VAR_A)"),
        ("$(VAR_A", "$(VAR_A"),
        ("$VAR_A", "$VAR_A"),
        ("foo$", "foo$"),
        ("$()", "$()"),
        ("f00__(VAR_A)__", "f00__(VAR_A)__"),
        ("$(VAR_A)$", "A$"),
    ],
)
def test_expand_matches_kubernetes(text: str, expected: str) -> None:
    assert expand(text, MAPPING) == expected


# -- env resolution ------------------------------------------------------------------------
def make_pod(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p1",
            "namespace": "ns1",
            "uid": "u-1",
            "labels": {"app": "x", "batch.kubernetes.io/job-completion-index": "3"},
            "annotations": {"note": "hi"},
        },
        "spec": {
            "nodeName": "node-a",
            "serviceAccountName": "sa1",
            "containers": [container],
            **spec,
        },
        "status": {},
    }


SECRETS = {
    ("Secret", "ns1", "creds"): {"key": "s3cr3t"},
    ("ConfigMap", "ns1", "cfg"): {"A": "1", "B": "2"},
}


def lookup(kind: str, namespace: str, name: str) -> dict[str, str] | None:
    return SECRETS.get((kind, namespace, name))


def resolve(container: dict[str, Any]) -> dict[str, str]:
    pod = make_pod(container)
    return resolve_env(
        pod,
        container,
        lookup=lookup,
        pod_ip="127.0.0.1",
        host_ip="127.0.0.1",
        allocatable={"cpu": "2", "memory": "1Gi"},
    )


def test_env_values_expand_earlier_variables_only() -> None:
    env = resolve(
        {
            "name": "c",
            "env": [
                {"name": "A", "value": "a"},
                {"name": "B", "value": "$(A)-$(C)"},
                {"name": "C", "value": "c"},
            ],
        }
    )
    assert env == {"A": "a", "B": "a-$(C)", "C": "c"}


def test_env_field_refs() -> None:
    def ref(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = resolve(
        {
            "name": "c",
            "env": [
                {"name": "NAME", **ref("metadata.name")},
                {"name": "NS", **ref("metadata.namespace")},
                {"name": "UID", **ref("metadata.uid")},
                {
                    "name": "IDX",
                    **ref("metadata.labels['batch.kubernetes.io/job-completion-index']"),
                },
                {"name": "NOTE", **ref("metadata.annotations['note']")},
                {"name": "MISSING", **ref("metadata.labels['nope']")},
                {"name": "NODE", **ref("spec.nodeName")},
                {"name": "SA", **ref("spec.serviceAccountName")},
                {"name": "IP", **ref("status.podIP")},
                {"name": "HOST", **ref("status.hostIP")},
            ],
        }
    )
    assert env == {
        "NAME": "p1", "NS": "ns1", "UID": "u-1", "IDX": "3", "NOTE": "hi", "MISSING": "",
        "NODE": "node-a", "SA": "sa1", "IP": "127.0.0.1", "HOST": "127.0.0.1",
    }  # fmt: skip


def test_env_resource_field_refs_round_up_and_default_to_allocatable() -> None:
    container = {
        "name": "c",
        "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}},
        "env": [
            {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
            {
                "name": "CPU_REQ_M",
                "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}},
            },
            {
                "name": "MEM_MI",
                "valueFrom": {
                    "resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}
                },
            },
            {"name": "CPU_LIM", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
    }
    assert resolve(container) == {
        "CPU_REQ": "1",
        "CPU_REQ_M": "250",
        "MEM_MI": "64",
        "CPU_LIM": "2",
    }


def test_env_secret_and_configmap_refs_honour_optional() -> None:
    def key_ref(kind: str, name: str, key: str, optional: bool = False) -> dict[str, Any]:
        return {"valueFrom": {kind: {"name": name, "key": key, "optional": optional}}}

    env = resolve(
        {
            "name": "c",
            "envFrom": [
                {"configMapRef": {"name": "cfg"}, "prefix": "CM_"},
                {"secretRef": {"name": "gone", "optional": True}},
            ],
            "env": [
                {"name": "S", **key_ref("secretKeyRef", "creds", "key")},
                {"name": "OPT1", **key_ref("secretKeyRef", "gone", "key", optional=True)},
                {"name": "OPT2", **key_ref("configMapKeyRef", "cfg", "nokey", optional=True)},
                {"name": "CM", **key_ref("configMapKeyRef", "cfg", "B")},
                {"name": "X", "value": "$(CM_A)$(S)"},
            ],
        }
    )
    assert env == {"CM_A": "1", "CM_B": "2", "S": "s3cr3t", "CM": "2", "X": "1s3cr3t"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}],
            'secret "gone" not found',
        ),
        (
            [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}],
            "couldn't find key k in Secret ns1/creds",
        ),
        (
            [{"name": "C", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}],
            'configmap "nope" not found',
        ),
    ],
)
def test_env_missing_required_reference_is_a_config_error(
    env: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(EnvConfigError, match=message):
        resolve({"name": "c", "env": env})


def test_envfrom_missing_required_source_is_a_config_error() -> None:
    with pytest.raises(EnvConfigError, match='configmap "nope" not found'):
        resolve({"name": "c", "envFrom": [{"configMapRef": {"name": "nope"}}]})


def test_command_and_args_expand_against_the_final_env() -> None:
    container = {"name": "c", "command": ["sh", "-c"], "args": ["echo $(MSG) $$(MSG) $(NOPE)"]}
    assert container_argv(container, {"MSG": "hi"}) == ["sh", "-c", "echo hi $(MSG) $(NOPE)"]
    assert container_argv({"name": "c", "args": ["x"]}, {}) == []


def test_decode_secret() -> None:
    assert decode_secret({"data": {"k": base64.b64encode(b"v").decode()}}) == {"k": "v"}


def test_parse_quantity() -> None:
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity("2e3") == 2000
    assert parse_quantity(3) == 3
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("lots")


# -- phase and status ----------------------------------------------------------------------
def term(code: int) -> Terminated:
    return Terminated(code, "Completed" if code == 0 else "Error", "", 1.0, 2.0, "emulator://1")


RUNNING = ContainerView("c", "img", "running", running_since=1.0)
WAITING = ContainerView("c", "img", "waiting")
OK = ContainerView("c", "img", "terminated", terminated=term(0))
FAILED = ContainerView("c", "img", "terminated", terminated=term(3))
BACKING_OFF = ContainerView(
    "c", "img", "waiting", waiting_reason="CrashLoopBackOff", last_terminated=term(1)
)


@pytest.mark.parametrize(
    ("policy", "inits", "containers", "terminating", "phase"),
    [
        ("Never", [], [WAITING], False, "Pending"),
        ("Never", [], [RUNNING], False, "Running"),
        ("Never", [], [RUNNING, WAITING], False, "Pending"),
        ("Never", [], [OK], False, "Succeeded"),
        ("Never", [], [FAILED], False, "Failed"),
        ("Never", [], [OK, FAILED], False, "Failed"),
        ("Never", [], [OK, RUNNING], False, "Running"),
        ("OnFailure", [], [BACKING_OFF], False, "Running"),
        ("OnFailure", [], [OK], False, "Succeeded"),
        ("Always", [], [BACKING_OFF], False, "Running"),
        ("Always", [], [OK], False, "Running"),
        ("Always", [], [OK], True, "Succeeded"),
        ("Always", [], [FAILED], True, "Failed"),
        ("Never", [RUNNING], [WAITING], False, "Pending"),
        ("Never", [FAILED], [WAITING], False, "Failed"),
        ("OnFailure", [BACKING_OFF], [WAITING], False, "Pending"),
        ("Never", [OK], [RUNNING], False, "Running"),
    ],
)
def test_pod_phase(
    policy: str,
    inits: list[ContainerView],
    containers: list[ContainerView],
    terminating: bool,
    phase: str,
) -> None:
    assert pod_phase(policy, inits, containers, terminating=terminating) == phase


def test_conditions_keep_transition_time_while_status_holds() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    conds = {c["type"]: c for c in pod_conditions("Running", [], [RUNNING], old, now=1e9)}
    assert conds["Ready"]["status"] == "True"
    assert conds["Ready"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert conds["ContainersReady"]["lastTransitionTime"] == "2001-09-09T01:46:40Z"
    done = {c["type"]: c for c in pod_conditions("Succeeded", [], [OK], old, now=1e9)}
    assert done["Ready"]["status"] == "False"
    assert done["Ready"]["reason"] == "PodCompleted"
    assert done["Initialized"]["status"] == "True"


def test_pod_status_reports_terminated_container_with_message() -> None:
    pod = make_pod({"name": "c", "image": "img"}, restartPolicy="Never")
    failed = ContainerView(
        "c", "img", "terminated", restart_count=0,
        terminated=Terminated(3, "Error", "boom", 10.0, 12.0, "emulator://42"), container_id="emulator://42",
    )  # fmt: skip
    status = pod_status(pod, [], [failed], now=13.0, start_time=9.0, host_ip="127.0.0.1")
    assert status["phase"] == "Failed"
    cs = status["containerStatuses"][0]
    assert cs["state"]["terminated"] == {
        "exitCode": 3, "reason": "Error", "message": "boom", "containerID": "emulator://42",
        "startedAt": "1970-01-01T00:00:10Z", "finishedAt": "1970-01-01T00:00:12Z",
    }  # fmt: skip
    assert cs["ready"] is False and cs["started"] is False
    assert status["podIP"] == "127.0.0.1" and status["startTime"] == "1970-01-01T00:00:09Z"
    assert "initContainerStatuses" not in status


# -- restarts ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "init", "code", "restart"),
    [
        ("Never", False, 1, False),
        ("OnFailure", False, 1, True),
        ("OnFailure", False, 0, False),
        ("Always", False, 0, True),
        ("Always", True, 0, False),
        ("Always", True, 1, True),
        ("Never", True, 1, False),
    ],
)
def test_should_restart(policy: str, init: bool, code: int, restart: bool) -> None:
    assert should_restart(policy, init=init, exit_code=code) is restart


def test_backoff_first_restart_is_immediate_then_doubles_to_cap() -> None:
    backoff = Backoff(base=1, cap=5)
    assert [backoff.delay(n) for n in range(1, 7)] == [0, 1, 2, 4, 5, 5]


def test_slot_counts_restarts_and_backs_off() -> None:
    slot = Slot({"name": "c", "image": "i"}, init=False)
    backoff = Backoff(base=10, cap=60)
    slot.begin_instance()
    assert slot.restart_count == 0
    slot.finish(
        Terminated(1, "Error", "", 100.0, 101.0, ""), restart=True, backoff=backoff, now_mono=0.0
    )
    assert slot.state == "waiting" and slot.retry_at == 0.0  # first restart: immediately
    slot.begin_instance()
    assert slot.restart_count == 1
    slot.finish(
        Terminated(1, "Error", "", 102.0, 103.0, ""), restart=True, backoff=backoff, now_mono=50.0
    )
    view = slot.view()
    assert view.waiting_reason == "CrashLoopBackOff" and slot.retry_at == 60.0
    assert view.last_terminated is not None and view.last_terminated.finished_at == 103.0
    slot.begin_instance()
    slot.finish(
        Terminated(0, "Completed", "", 104.0, 105.0, ""),
        restart=False,
        backoff=backoff,
        now_mono=0.0,
    )
    assert slot.view().state == "terminated" and slot.restart_count == 2


def test_slot_restore_after_emulator_restart() -> None:
    running = {
        "name": "c",
        "restartCount": 2,
        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
    }
    never = Slot({"name": "c"}, init=False)
    never.restore(running, "Never")
    assert never.state == "terminated" and never.terminated is not None
    assert never.terminated.reason == "ContainerStatusUnknown"
    always = Slot({"name": "c"}, init=False)
    always.restore(running, "Always")
    always.begin_instance()
    assert always.restart_count == 3


# -- scheduling ----------------------------------------------------------------------------
def test_pod_requests_take_max_of_init_and_sum_of_containers() -> None:
    pod = {
        "spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "100m"}}},
                {"resources": {"requests": {"cpu": "200m", "memory": "1Mi"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "500m"}}}],
        }
    }
    assert pod_requests(pod) == Resources(Decimal("0.5"), Decimal(2**20), 1)


def test_unfit_reasons() -> None:
    alloc = {"cpu": "1", "memory": "1Gi", "pods": "2"}
    pod = {"spec": {"containers": [{"resources": {"requests": {"cpu": "600m"}}}]}}
    labels = {"kubernetes.io/os": "linux"}
    assert unfit_reasons(pod, Resources(pods=1), alloc, labels) == []
    assert unfit_reasons(pod, Resources(Decimal("0.5"), pods=1), alloc, labels) == [
        "Insufficient cpu"
    ]
    assert unfit_reasons(pod, Resources(pods=2), alloc, labels) == ["Too many pods"]
    picky = {"spec": {"nodeSelector": {"kubernetes.io/os": "windows"}, "containers": []}}
    assert unfit_reasons(picky, Resources(), alloc, labels) == [
        "node(s) didn't match Pod's node affinity/selector"
    ]


def test_wants_this_scheduler() -> None:
    assert wants_this_scheduler({"metadata": {}, "spec": {}})
    assert not wants_this_scheduler({"metadata": {}, "spec": {"nodeName": "x"}})
    assert not wants_this_scheduler({"metadata": {}, "spec": {"schedulingGates": [{"name": "g"}]}})
    assert not wants_this_scheduler({"metadata": {}, "spec": {"schedulerName": "other"}})
    assert not wants_this_scheduler({"metadata": {"deletionTimestamp": "x"}, "spec": {}})


def test_wants_token_precedence() -> None:
    assert wants_token({"spec": {}}, None)
    assert not wants_token({"spec": {}}, {"automountServiceAccountToken": False})
    assert wants_token(
        {"spec": {"automountServiceAccountToken": True}}, {"automountServiceAccountToken": False}
    )
    assert not wants_token({"spec": {"automountServiceAccountToken": False}}, {})
    projected = {
        "spec": {
            "automountServiceAccountToken": False,
            "volumes": [{"projected": {"sources": [{"serviceAccountToken": {}}]}}],
        }
    }
    assert wants_token(projected, {})


# -- termination messages ------------------------------------------------------------------
def test_termination_message_file_then_log_fallback(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path, "c")
    paths.dir.mkdir()
    paths.termination_log.write_bytes(b"x" * 5000)
    assert termination_message(paths, "File", 1) == "x" * 4096
    paths.termination_log.write_bytes(b"")
    paths.log.write_text("".join(f"line {i}\n" for i in range(200)))
    assert termination_message(paths, "File", 1) == ""
    assert termination_message(paths, "FallbackToLogsOnError", 0) == ""
    tail = termination_message(paths, "FallbackToLogsOnError", 1)
    assert tail.splitlines()[0] == "line 120" and tail.endswith("line 199\n") and len(tail) <= 2048
