"""Tests of the node emulator.

Unit tests (no cluster): env resolution, status building, restart rules, scheduling fit,
termination messages. The e2e tests (marked e2e) need a running test cluster:

    tests/cluster/testcluster up && eval "$(tests/cluster/testcluster env)"
    .venv/bin/pytest tests/cluster/test_node_emulator.py -m e2e
"""

from __future__ import annotations

import base64
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
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
        "NAME": "p1",
        "NS": "ns1",
        "UID": "u-1",
        "IDX": "3",
        "NOTE": "hi",
        "MISSING": "",
        "NODE": "node-a",
        "SA": "sa1",
        "IP": "127.0.0.1",
        "HOST": "127.0.0.1",
    }


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
SIDECAR = ContainerView("side", "img", "running", running_since=1.0, sidecar=True)
SIDECAR_FAILED = ContainerView("side", "img", "terminated", terminated=term(1), sidecar=True)
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
        ("Never", [SIDECAR], [RUNNING], False, "Running"),
        ("Never", [SIDECAR], [OK], False, "Succeeded"),
        ("Never", [SIDECAR_FAILED], [WAITING], False, "Pending"),
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
        "c",
        "img",
        "terminated",
        restart_count=0,
        terminated=Terminated(3, "Error", "boom", 10.0, 12.0, "emulator://42"),
        container_id="emulator://42",
    )
    status = pod_status(pod, [], [failed], now=13.0, start_time=9.0, host_ip="127.0.0.1")
    assert status["phase"] == "Failed"
    cs = status["containerStatuses"][0]
    assert cs["state"]["terminated"] == {
        "exitCode": 3,
        "reason": "Error",
        "message": "boom",
        "containerID": "emulator://42",
        "startedAt": "1970-01-01T00:00:10Z",
        "finishedAt": "1970-01-01T00:00:12Z",
    }
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


# -- the pod worker with real processes and a recording fake API ----------------------------
class FakeApi:
    """Records status patches and deletes; a unit-test stand-in, the e2e tests use the real one."""

    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.tokens = 0

    def get_or_none(self, path: str) -> dict[str, Any] | None:
        return {"metadata": {"name": "default"}} if "/serviceaccounts/" in path else None

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/token"):
            self.tokens += 1
            return {"status": {"token": f"token-{self.tokens}"}}
        self.events.append(body)
        return body

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(body["status"])
        return {"status": body["status"]}

    def delete(self, path: str, body: dict[str, Any] | None = None) -> None:
        self.deleted.append(path)


def start_worker(pod: dict[str, Any], tmp_path: Path) -> tuple[Any, FakeApi, threading.Event]:
    from kubelet_emu.api import ClusterInfo
    from kubelet_emu.events import EventRecorder
    from kubelet_emu.launch import Context
    from kubelet_emu.podworker import PodWorker
    from kubelet_emu.processes import ProcessRegistry

    api = FakeApi()
    ctx = Context(
        api=api,  # type: ignore[arg-type]
        cluster=ClusterInfo("https://127.0.0.1:1", None, insecure=True),
        node_name="node-a",
        host_ip="127.0.0.1",
        allocatable={"cpu": "2", "memory": "1Gi", "pods": "10"},
        pods_dir=tmp_path,
        registry=ProcessRegistry(),
        backoff=Backoff(base=0.1, cap=0.2),
        base_path=os.environ.get("PATH", "/usr/bin:/bin"),
        events=EventRecorder(api, "node-a"),  # type: ignore[arg-type]
        stopping=threading.Event(),
    )
    done = threading.Event()
    worker = PodWorker(pod, ctx, lambda _uid: done.set(), recovered=False)
    worker.start()
    return worker, api, done


def worker_pod(command: list[str], **spec: Any) -> dict[str, Any]:
    pod = make_pod(
        {"name": "c", "image": "img", "command": command},
        automountServiceAccountToken=False,
        **spec,
    )
    pod["metadata"]["generation"] = 1
    return pod


def test_worker_reports_exit_code_and_termination_message(tmp_path: Path) -> None:
    script = 'echo "$IDX done" > "$KUBEMAP_TERMINATION_LOG"; exit 3'
    pod = worker_pod(["sh", "-c", script], restartPolicy="Never")
    pod["spec"]["containers"][0]["env"] = [
        {"name": "IDX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}
    ]
    _, api, done = start_worker(pod, tmp_path)
    assert done.wait(10)
    assert api.statuses[-1]["phase"] == "Failed"
    state = api.statuses[-1]["containerStatuses"][0]["state"]["terminated"]
    assert (state["exitCode"], state["reason"], state["message"]) == (3, "Error", "x done\n")
    assert api.statuses[-1]["observedGeneration"] == 1


def test_worker_restarts_on_failure_until_success(tmp_path: Path) -> None:
    pod = worker_pod(
        ["sh", "-c", "test -f tried && exit 0; touch tried; exit 1"], restartPolicy="OnFailure"
    )
    _, api, done = start_worker(pod, tmp_path)
    assert done.wait(10)
    final = api.statuses[-1]
    assert final["phase"] == "Succeeded"
    status = final["containerStatuses"][0]
    assert status["restartCount"] == 1 and status["lastState"]["terminated"]["exitCode"] == 1


def test_worker_deletion_sends_sigterm_then_final_delete(tmp_path: Path) -> None:
    pod = worker_pod(
        ["sh", "-c", 'trap "exit 7" TERM; while true; do sleep 0.05; done'], restartPolicy="Always"
    )
    worker, api, done = start_worker(pod, tmp_path)
    wait_for("the container to run", lambda: any(s["phase"] == "Running" for s in api.statuses), 10)
    deleting = {
        **pod,
        "metadata": {**pod["metadata"], "deletionTimestamp": "x", "deletionGracePeriodSeconds": 5},
    }
    started = time.monotonic()
    worker.update(deleting)
    assert done.wait(10)
    assert (
        time.monotonic() - started < 3
    )  # the trap exits at once, no need to wait the grace period
    assert api.statuses[-1]["phase"] == "Failed"  # exit 7: the kubelet's terminal phase on deletion
    assert api.statuses[-1]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 7
    assert api.deleted == ["/api/v1/namespaces/ns1/pods/p1"]


def test_worker_active_deadline(tmp_path: Path) -> None:
    pod = worker_pod(["sleep", "30"], restartPolicy="Never", activeDeadlineSeconds=1)
    _, api, done = start_worker(pod, tmp_path)
    assert done.wait(10)
    final = api.statuses[-1]
    assert (final["phase"], final["reason"]) == ("Failed", "DeadlineExceeded")
    assert final["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143
    assert any(
        e.get("reason") == "DeadlineExceeded" for e in wait_for("event", lambda: api.events, 5)
    )


def test_worker_runs_sidecar_beside_containers_and_stops_it_at_the_end(tmp_path: Path) -> None:
    sidecar = {
        "name": "side",
        "image": "img",
        "restartPolicy": "Always",
        "command": ["sleep", "30"],
    }
    init = {"name": "init", "image": "img", "command": ["true"]}
    pod = worker_pod(
        ["sh", "-c", "sleep 0.3"], restartPolicy="Never", initContainers=[sidecar, init]
    )
    started = time.monotonic()
    _, api, done = start_worker(pod, tmp_path)
    assert done.wait(10)
    assert time.monotonic() - started < 5
    running = [s for s in api.statuses if s["phase"] == "Running"]
    assert running and running[0]["initContainerStatuses"][0]["state"].keys() == {"running"}
    final = api.statuses[-1]
    assert final["phase"] == "Succeeded"
    side, first = final["initContainerStatuses"]
    assert side["state"]["terminated"]["exitCode"] == 143  # SIGTERM once the container was done
    assert first["state"]["terminated"]["exitCode"] == 0


def test_worker_writes_and_refreshes_the_pod_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kubelet_emu.sa_token

    monkeypatch.setattr(kubelet_emu.sa_token, "REFRESH_AFTER", 0.3)
    # Waits for the second refresh instead of sleeping a fixed time: under load a fixed
    # 1.2 s saw fewer refreshes, and a refresh after the copy made "the latest" a race.
    script = (
        'cp "$KUBECONFIG" first; for i in $(seq 300); do '
        'grep -Eq "token: token-([3-9]|[0-9]{2,})$" "$KUBECONFIG" && break; sleep 0.1; done; '
        'cp "$KUBECONFIG" last'
    )
    pod = worker_pod(["sh", "-c", script], restartPolicy="Never")
    del pod["spec"]["automountServiceAccountToken"]
    _, api, done = start_worker(pod, tmp_path)
    assert done.wait(60)
    assert api.statuses[-1]["phase"] == "Succeeded"
    pod_dir = next(tmp_path.iterdir())
    first = (pod_dir / "first").read_text()
    last = (pod_dir / "last").read_text()
    assert "token: token-1" in first and "namespace: ns1" in first
    issued = re.search(r"token: token-(\d+)$", last, re.M)
    assert issued is not None and 3 <= int(issued.group(1)) <= api.tokens, last
    token_file = (pod_dir / "serviceaccount" / "token").read_text()
    assert token_file.startswith("token-") and int(token_file[6:]) >= int(issued.group(1))
    assert oct((pod_dir / "kubeconfig").stat().st_mode & 0o777) == "0o600"


# ==========================================================================================
# e2e: against a running test cluster (KUBECONFIG) whose node is this emulator
# ==========================================================================================
E2E_TIMEOUT = 60.0

e2e = pytest.mark.e2e
needs_cluster = pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"), reason="needs KUBECONFIG of a running test cluster"
)


@pytest.fixture(scope="module")
def kube() -> Any:
    from kubernetes import client, config

    config.load_kube_config()
    nodes = client.CoreV1Api().list_node(label_selector="kubemap.io/emulated-node=true").items
    if not nodes:
        pytest.skip("these tests check the node emulator; the cluster has no emulated node")
    return client


@pytest.fixture(scope="module")
def namespace(kube: Any) -> Iterator[str]:
    name = f"emu-e2e-{uuid.uuid4().hex[:6]}"
    core = kube.CoreV1Api()
    core.create_namespace({"metadata": {"name": name}})
    deadline = time.monotonic() + E2E_TIMEOUT
    while time.monotonic() < deadline:  # the ServiceAccount controller creates "default"
        if core.list_namespaced_service_account(name, field_selector="metadata.name=default").items:
            break
        time.sleep(0.2)
    yield name
    core.delete_namespace(name)


def wait_for(what: str, check: Callable[[], Any], timeout: float = E2E_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def pod_manifest(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "busybox",
        "command": command,
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def run_pod(
    kube: Any,
    namespace: str,
    manifest: dict[str, Any],
    phases: tuple[str, ...] = ("Succeeded", "Failed"),
) -> Any:
    core = kube.CoreV1Api()
    core.create_namespaced_pod(namespace, manifest)
    name = manifest["metadata"]["name"]

    def reached() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None

    return wait_for(f"pod {name} to reach {phases}", reached)


def terminated(pod: Any, index: int = 0) -> Any:
    return pod.status.container_statuses[index].state.terminated


@e2e
@needs_cluster
def test_e2e_failing_command_reports_exit_code_and_log_tail(kube: Any, namespace: str) -> None:
    manifest = pod_manifest(
        "fails",
        ["sh", "-c", "echo $MY_VAR; exit 3"],
        container={
            "env": [
                {"name": "WHO", "value": "emulator"},
                {"name": "MY_VAR", "value": "hello-$(WHO)"},
            ],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        },
    )
    pod = run_pod(kube, namespace, manifest)
    assert pod.status.phase == "Failed"
    state = terminated(pod)
    assert (state.exit_code, state.reason) == (3, "Error")
    assert state.message.strip() == "hello-emulator"
    ready = {c.type: c.status for c in pod.status.conditions}
    assert ready["Ready"] == "False" and ready["PodScheduled"] == "True"


@e2e
@needs_cluster
def test_e2e_env_from_secret_configmap_and_downward_api(kube: Any, namespace: str) -> None:
    core = kube.CoreV1Api()
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cfg"}, "data": {"mode": "fast"}}
    )
    env = [
        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "M", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {
            "name": "OPT",
            "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": True}},
        },
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    script = 'printf "%s %s %s %s" "$S" "$M" "${OPT-unset}" "$POD" > "$KUBEMAP_TERMINATION_LOG"'
    pod = run_pod(
        kube, namespace, pod_manifest("envs", ["sh", "-c", script], container={"env": env})
    )
    assert pod.status.phase == "Succeeded"
    assert terminated(pod).message == "s3cr3t fast unset envs"
    assert terminated(pod).reason == "Completed"


@e2e
@needs_cluster
def test_e2e_missing_secret_waits_with_config_error(kube: Any, namespace: str) -> None:
    core = kube.CoreV1Api()
    env = [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "later", "key": "k"}}}]
    core.create_namespaced_pod(
        namespace, pod_manifest("waits", ["sh", "-c", 'test "$S" = v'], container={"env": env})
    )

    def waiting_reason() -> Any:
        statuses = core.read_namespaced_pod("waits", namespace).status.container_statuses or []
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason

    assert wait_for("CreateContainerConfigError", waiting_reason) == "CreateContainerConfigError"

    def warning() -> Any:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=waits")
        return [e.message for e in events.items if e.type == "Warning" and e.reason == "Failed"]

    assert wait_for("a Warning event", warning) == ['Error: secret "later" not found']
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "later"}, "stringData": {"k": "v"}}
    )
    pod = wait_for(
        "pod to succeed",
        lambda: (
            (p := core.read_namespaced_pod("waits", namespace)).status.phase == "Succeeded" and p
        ),
    )
    assert terminated(pod).exit_code == 0


@e2e
@needs_cluster
def test_e2e_no_command_cannot_run(kube: Any, namespace: str) -> None:
    manifest = pod_manifest("entrypoint", [])
    del manifest["spec"]["containers"][0]["command"]
    pod = run_pod(kube, namespace, manifest)
    assert pod.status.phase == "Failed"
    assert terminated(pod).reason == "ContainerCannotRun"
    assert "entrypoint" in terminated(pod).message


@e2e
@needs_cluster
def test_e2e_init_containers_then_onfailure_restart(kube: Any, namespace: str) -> None:
    manifest = pod_manifest(
        "restarts",
        ["sh", "-c", "test -f init-ran || exit 9; test -f tried && exit 0; touch tried; exit 1"],
        restartPolicy="OnFailure",
        initContainers=[{"name": "init", "image": "busybox", "command": ["touch", "init-ran"]}],
    )
    pod = run_pod(kube, namespace, manifest)
    assert pod.status.phase == "Succeeded"
    status = pod.status.container_statuses[0]
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 1
    assert pod.status.init_container_statuses[0].state.terminated.exit_code == 0


@e2e
@needs_cluster
def test_e2e_active_deadline_fails_the_pod(kube: Any, namespace: str) -> None:
    manifest = pod_manifest("deadline", ["sleep", "60"], activeDeadlineSeconds=2)
    started = time.monotonic()
    pod = run_pod(kube, namespace, manifest)
    assert (pod.status.phase, pod.status.reason) == ("Failed", "DeadlineExceeded")
    assert terminated(pod).exit_code == 143  # SIGTERM
    assert 2 <= time.monotonic() - started < 15


def _pid(pod: Any) -> int:
    return int(pod.status.container_statuses[0].container_id.rpartition("/")[2])


@e2e
@needs_cluster
@pytest.mark.parametrize(
    ("script", "grace", "least", "most"),
    [
        ('trap "exit 0" TERM; while true; do sleep 0.1; done', 30, 0.0, 10.0),
        ('trap "" TERM; while true; do sleep 0.1; done', 3, 3.0, 12.0),
    ],
)
def test_e2e_delete_honours_grace_period(
    kube: Any, namespace: str, script: str, grace: int, least: float, most: float
) -> None:
    core = kube.CoreV1Api()
    name = f"graceful-{grace}"
    pod = run_pod(kube, namespace, pod_manifest(name, ["sh", "-c", script]), phases=("Running",))
    pid = _pid(pod)
    assert Path(f"/proc/{pid}").exists()
    started = time.monotonic()
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace)

    def gone() -> bool:
        return not core.list_namespaced_pod(namespace, field_selector=f"metadata.name={name}").items

    wait_for(f"pod {name} to be deleted", gone, timeout=most + 5)
    took = time.monotonic() - started
    assert least <= took <= most, f"deletion took {took:.1f}s"
    assert (
        not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    )


@e2e
@needs_cluster
def test_e2e_indexed_job_runs_to_completion(kube: Any, namespace: str) -> None:
    batch = kube.BatchV1Api()
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "indexed"},
        "spec": {
            "completionMode": "Indexed",
            "completions": 5,
            "parallelism": 2,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox",
                            "command": [
                                "sh",
                                "-c",
                                'echo "index $JOB_COMPLETION_INDEX" > "$KUBEMAP_TERMINATION_LOG"; sleep 0.5',
                            ],
                        }
                    ],
                }
            },
        },
    }
    batch.create_namespaced_job(namespace, job)

    def complete() -> Any:
        status = batch.read_namespaced_job("indexed", namespace).status
        return (
            any(c.type == "Complete" and c.status == "True" for c in status.conditions or [])
            and status
        )

    status = wait_for("the Indexed Job to complete", complete, timeout=120)
    assert status.succeeded == 5 and status.completed_indexes == "0-4"
    pods = kube.CoreV1Api().list_namespaced_pod(namespace, label_selector="job-name=indexed").items
    messages = sorted(terminated(p).message.strip() for p in pods if p.status.phase == "Succeeded")
    assert messages == [f"index {i}" for i in range(5)]
    starts = sorted((terminated(p).started_at, terminated(p).finished_at) for p in pods)
    overlap = max(sum(1 for s, f in starts if s <= t < f) for t, _ in starts)
    assert overlap <= 2, "parallelism 2 was exceeded"


@e2e
@needs_cluster
def test_e2e_deployment_pod_becomes_ready(kube: Any, namespace: str) -> None:
    apps = kube.AppsV1Api()
    labels = {"app": "sleeper"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sleeper"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "main", "image": "busybox", "command": ["sleep", "3600"]}
                    ]
                },
            },
        },
    }
    apps.create_namespaced_deployment(namespace, deployment)
    wait_for(
        "the Deployment to be available",
        lambda: (
            apps.read_namespaced_deployment("sleeper", namespace).status.available_replicas == 1
        ),
    )
    core = kube.CoreV1Api()
    (pod,) = core.list_namespaced_pod(namespace, label_selector="app=sleeper").items
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
    pid = _pid(pod)
    os.kill(pid, 9)  # a crash: restartPolicy Always brings the container back

    def restarted() -> Any:
        status = core.read_namespaced_pod(pod.metadata.name, namespace).status.container_statuses[0]
        return status.restart_count == 1 and status.state.running and status

    status = wait_for("the container to restart", restarted)
    assert status.last_state.terminated.exit_code == 137
    apps.delete_namespaced_deployment("sleeper", namespace)


SSAR_SCRIPT = """
import os
from kubernetes import client, config
config.load_kube_config()
authz = client.AuthorizationV1Api()
def can(verb, resource):
    review = {"spec": {"resourceAttributes": {"namespace": os.environ["NS"], "verb": verb, "resource": resource}}}
    return authz.create_self_subject_access_review(review).status.allowed
who = client.AuthenticationV1Api().create_self_subject_review({}).status.user_info.username
forbidden = 0
try:
    client.CoreV1Api().list_namespaced_secret(os.environ["NS"])
except client.ApiException as exc:
    forbidden = exc.status
result = f"{who} get-pods={can('get', 'pods')} list-secrets={can('list', 'secrets')} {forbidden}"
open(os.environ["KUBEMAP_TERMINATION_LOG"], "w").write(result)
"""


@e2e
@needs_cluster
def test_e2e_pod_token_is_subject_to_rbac(kube: Any, namespace: str) -> None:
    core, rbac = kube.CoreV1Api(), kube.RbacAuthorizationV1Api()
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    env = [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    manifest = pod_manifest(
        "rbac",
        ["python", "-c", SSAR_SCRIPT],
        serviceAccountName="reader",
        container={"env": env, "terminationMessagePolicy": "FallbackToLogsOnError"},
    )
    pod = run_pod(kube, namespace, manifest)
    assert terminated(pod).message == (
        f"system:serviceaccount:{namespace}:reader get-pods=True list-secrets=False 403"
    ), terminated(pod).message
    no_token = pod_manifest(
        "no-token",
        ["sh", "-c", 'echo "${KUBECONFIG-none}" > "$KUBEMAP_TERMINATION_LOG"'],
        automountServiceAccountToken=False,
    )
    assert terminated(run_pod(kube, namespace, no_token)).message.strip() == "none"


@e2e
@needs_cluster
def test_e2e_pod_that_does_not_fit_stays_pending(kube: Any, namespace: str) -> None:
    core = kube.CoreV1Api()
    big = {"resources": {"requests": {"cpu": "1000"}}}
    core.create_namespaced_pod(namespace, pod_manifest("too-big", ["true"], container=big))

    def unschedulable() -> Any:
        pod = core.read_namespaced_pod("too-big", namespace)
        conditions = {c.type: c for c in pod.status.conditions or []}
        scheduled = conditions.get("PodScheduled")
        return scheduled and scheduled.reason == "Unschedulable" and (pod, scheduled)

    pod, scheduled = wait_for("PodScheduled=False/Unschedulable", unschedulable)
    assert pod.spec.node_name is None and pod.status.phase == "Pending"
    assert "Insufficient cpu" in scheduled.message
    core.delete_namespaced_pod("too-big", namespace)


@e2e
@needs_cluster
def test_e2e_missing_executable_is_a_start_error(kube: Any, namespace: str) -> None:
    pod = run_pod(kube, namespace, pod_manifest("no-exe", ["/no/such/program"]))
    assert pod.status.phase == "Failed"
    assert (terminated(pod).reason, terminated(pod).exit_code) == ("StartError", 128)
    assert "/no/such/program" in terminated(pod).message


@e2e
@needs_cluster
def test_e2e_every_container_runs(kube: Any, namespace: str) -> None:
    manifest = pod_manifest("two", ["sh", "-c", "sleep 0.3; exit 0"])
    manifest["spec"]["containers"].append(
        {"name": "second", "image": "busybox", "command": ["sh", "-c", "sleep 0.3; exit 2"]}
    )
    pod = run_pod(kube, namespace, manifest)
    assert pod.status.phase == "Failed"
    codes = {s.name: s.state.terminated.exit_code for s in pod.status.container_statuses}
    assert codes == {"main": 0, "second": 2}
