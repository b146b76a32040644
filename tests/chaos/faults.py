"""Fault injection on the test cluster (tests/cluster): stop and start its components by PID,
SIGKILL the operator's process, and copy a worker pod.

A component is restarted with the very command line, environment and working directory it was
started with (read from /proc before it is stopped), and the new process is recorded in the
cluster's state.json, so `testcluster down` stops the new one. Nothing is signalled by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"
if str(CLUSTER_DIR) not in sys.path:
    sys.path.insert(0, str(CLUSTER_DIR))

from clusterlib import procs  # noqa: E402
from clusterlib.state import ClusterState, state_dir  # noqa: E402

OPERATOR_NAMESPACE = "kubemap-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=kubemap,app.kubernetes.io/component=operator"


@dataclass(frozen=True)
class Launch:
    """How a component was started: enough to start it again the same way."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    cwd: str
    log: str


def wait_until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # not back yet: connection refused, 503, ...
            last = exc
        time.sleep(every)
    raise AssertionError(f"{what}: not true after {timeout:.0f}s (last error: {last})")


class LiveCluster:
    """The running test cluster as recorded in its state dir."""

    def __init__(self, d: Path | None = None) -> None:
        self.dir = d or state_dir()
        loaded = ClusterState.load(self.dir)
        if loaded is None or not loaded.ready:
            raise RuntimeError(f"no running test cluster in {self.dir}: run `testcluster up`")
        self.state = loaded

    def proc(self, name: str) -> procs.Proc:
        found = [p for p in self.state.procs if p.name == name]
        if not found:
            raise KeyError(f"the test cluster has no component {name!r}")
        return found[-1]

    def pid(self, name: str) -> int:
        return self.proc(name).pid

    def _launch(self, proc: procs.Proc) -> Launch:
        base = Path(f"/proc/{proc.pid}")
        cmd = [a.decode() for a in (base / "cmdline").read_bytes().split(b"\0") if a]
        env = dict(
            item.decode().split("=", 1)
            for item in (base / "environ").read_bytes().split(b"\0")
            if b"=" in item
        )
        return Launch(proc.name, cmd, env, os.readlink(base / "cwd"), proc.log)

    def stop(self, name: str) -> Launch:
        """Stop one component (SIGTERM, then SIGKILL after a grace period) and return how to
        start it again. The node emulator gets SIGTERM only: it stops its own pods, as a node
        going away does; the others are stopped with their process group."""
        proc = self.proc(name)
        launch = self._launch(proc)
        if name == "node-emulator":
            # procs.stop would also sweep every process carrying the cluster's marker, which
            # includes the control plane: signal the emulator alone and let it stop its pods.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            wait_until(
                "the node emulator exits", lambda: not procs.is_alive(proc.pid, proc.start_time), 60
            )
        else:
            left = procs.stop(proc, self.state.cluster_id, grace=10)
            if left:
                raise AssertionError(f"{name}: processes {left} survived SIGKILL")
        return launch

    def start(self, launch: Launch) -> procs.Proc:
        proc = procs.spawn(launch.name, launch.cmd, Path(launch.log), launch.env, Path(launch.cwd))
        self.state.procs = [p for p in self.state.procs if p.name != launch.name] + [proc]
        self.state.save(self.dir)
        return proc

    def outage(self, name: str, seconds: float, ready: Callable[[], bool] | None = None) -> None:
        """Component NAME stopped for SECONDS, started again (also when the wait is cut
        short), and, given `ready`, answering again before this returns."""
        launch = self.stop(name)
        try:
            time.sleep(seconds)
        finally:
            self.start(launch)
        if ready is not None:
            wait_until(f"{name} answers again", ready, 120)

    def s3_ready(self) -> bool:
        from clusterlib import s3

        return s3.ensure_bucket(
            self.state.s3_endpoint, self.state.access_key, self.state.secret_key
        )


def api_ready(core: client.CoreV1Api) -> bool:
    core.list_namespace(limit=1, _request_timeout=3)
    return True


def operator_pods(core: client.CoreV1Api) -> list[Any]:
    return list(
        core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=OPERATOR_SELECTOR).items
    )


def running_operator(core: client.CoreV1Api) -> Any | None:
    """The operator pod whose container runs now (not terminating), or None."""
    for pod in operator_pods(core):
        if pod.metadata.deletion_timestamp is not None:
            continue
        statuses = pod.status.container_statuses or []
        if statuses and statuses[0].state.running is not None and statuses[0].container_id:
            return pod
    return None


def container_pid(pod: Any) -> int:
    """The node emulator's containerID is emulator://<pid of the process group leader>."""
    cid = pod.status.container_statuses[0].container_id
    assert cid.startswith("emulator://"), cid
    return int(cid.removeprefix("emulator://"))


def sigkill_operator(core: client.CoreV1Api, timeout: float = 120) -> None:
    """SIGKILL the operator's process group (no shutdown code runs), then delete its pod at
    once so the Deployment starts a fresh one instead of the emulator's crash-loop back-off
    (which grows to 60 s after a few kills). Returns when the new operator process runs."""
    pod = running_operator(core)
    assert pod is not None, "no running operator pod to kill"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(container_pid(pod), signal.SIGKILL)
    with contextlib.suppress(client.ApiException):
        core.delete_namespaced_pod(pod.metadata.name, OPERATOR_NAMESPACE, grace_period_seconds=0)
    old = pod.metadata.name

    def fresh() -> bool:
        new = running_operator(core)
        return new is not None and new.metadata.name != old

    wait_until("a new operator pod runs", fresh, timeout)


def duplicate_pod(core: client.CoreV1Api, pod: Any, suffix: str = "dup") -> str:
    """Create a second pod for the same slice as ``pod`` (same labels, annotations, owner and
    spec), as a controller bug or a replayed create would; return its name."""
    raw = client.ApiClient().sanitize_for_serialization(pod)
    meta = raw["metadata"]
    name = f"{meta['name']}-{suffix}"
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": meta.get("labels"),
            "annotations": meta.get("annotations"),
            "ownerReferences": meta.get("ownerReferences"),
            "finalizers": meta.get("finalizers"),
        },
        "spec": {k: v for k, v in raw["spec"].items() if k != "nodeName"},
    }
    core.create_namespaced_pod(meta["namespace"], body)
    return name


def operator_launch(core: client.CoreV1Api) -> tuple[Launch, str]:
    """How the chart's operator runs (command, environment, cwd) and its ServiceAccount."""
    pod = running_operator(core)
    assert pod is not None, "no running operator pod"
    pid = container_pid(pod)
    base = Path(f"/proc/{pid}")
    cmd = [a.decode() for a in (base / "cmdline").read_bytes().split(b"\0") if a]
    env = dict(
        item.decode().split("=", 1)
        for item in (base / "environ").read_bytes().split(b"\0")
        if b"=" in item
    )
    return Launch("operator", cmd, env, os.readlink(base / "cwd"), ""), str(
        pod.spec.service_account_name
    )


def scale_operator(apps: client.AppsV1Api, core: client.CoreV1Api, replicas: int) -> None:
    deployments = apps.list_namespaced_deployment(
        OPERATOR_NAMESPACE, label_selector=OPERATOR_SELECTOR
    ).items
    assert len(deployments) == 1, [d.metadata.name for d in deployments]
    apps.patch_namespaced_deployment_scale(
        deployments[0].metadata.name, OPERATOR_NAMESPACE, {"spec": {"replicas": replicas}}
    )
    if replicas == 0:
        wait_until("the operator pod is gone", lambda: not operator_pods(core), 120)
    else:
        wait_until("the operator runs", lambda: running_operator(core) is not None, 120)


def serviceaccount_kubeconfig(
    core: client.CoreV1Api, account: str, server: str, path: Path
) -> Path:
    """A kubeconfig for ``server`` (plain HTTP on loopback) that authenticates as the
    operator's own ServiceAccount, with a fresh token from the TokenRequest API."""
    request = {"spec": {"audiences": [], "expirationSeconds": 3600}}
    token = core.create_namespaced_service_account_token(account, OPERATOR_NAMESPACE, request)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "proxy", "cluster": {"server": server}}],
        "users": [{"name": account, "user": {"token": token.status.token}}],
        "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": account}}],
        "current-context": "proxy",
    }
    import yaml

    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class LocalOperator:
    """The operator run as a host process with the chart's command and environment but a
    kubeconfig of our choosing; the chart's Deployment is scaled to 0 meanwhile."""

    def __init__(self, launch: Launch, kubeconfig: Path, log: Path) -> None:
        self.launch, self.kubeconfig, self.log = launch, kubeconfig, log
        self.proc: procs.Proc | None = None

    def __enter__(self) -> LocalOperator:
        env = {**self.launch.env, "KUBECONFIG": str(self.kubeconfig)}
        self.proc = procs.spawn("operator", self.launch.cmd, self.log, env, self.kubeconfig.parent)
        return self

    def __exit__(self, *_: object) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while procs.is_alive(proc.pid, proc.start_time) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
