"""Helpers of the end-to-end suite (imported by conftest.py and the tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = os.environ.get("KUBEMAP_E2E_OPERATOR_NAMESPACE", "kubemap-system")
OPERATOR_SELECTOR = "app.kubernetes.io/name=kubemap,app.kubernetes.io/component=operator"
NAMESPACE = os.environ.get("KUBEMAP_E2E_NAMESPACE", "default")


class Operator:
    """The operator under test: the chart's Deployment, or a local process."""

    def __init__(self, core: client.CoreV1Api, local: bool, log: Path) -> None:
        self.core = core
        self.local = local
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not self.local:
            return
        env = {
            **os.environ,
            "KUBEMAP_METRICS_PORT": "0",
            "KUBEMAP_LIVENESS_PORT": "0",
            "KUBEMAP_LISTEN_ADDRESS": "127.0.0.1",
            "KUBEMAP_RECONCILE_INTERVAL": "2",
        }
        env.setdefault("KUBEMAP_S3_ENDPOINT", os.environ.get("AWS_ENDPOINT_URL_S3", ""))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubemap_operator"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill_and_restart(self) -> None:
        """Kill the operator without warning (SIGKILL / grace period 0) and bring it back."""
        if self.local:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
            self.start()
            return
        pods = self.core.list_namespaced_pod(
            OPERATOR_NAMESPACE, label_selector=OPERATOR_SELECTOR
        ).items
        assert pods, f"no operator pod in {OPERATOR_NAMESPACE} ({OPERATOR_SELECTOR})"
        old = {p.metadata.name for p in pods}
        for pod in pods:
            self.core.delete_namespaced_pod(
                pod.metadata.name, OPERATOR_NAMESPACE, grace_period_seconds=0
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            fresh = [
                p
                for p in self.core.list_namespaced_pod(
                    OPERATOR_NAMESPACE, label_selector=OPERATOR_SELECTOR
                ).items
                if p.metadata.name not in old and (p.status.phase == "Running")
            ]
            if fresh:
                return
            time.sleep(0.5)
        raise AssertionError("the operator Deployment did not bring a new pod up within 120 s")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 180, every: float = 0.2) -> Any:
    """check()'s first truthy value, asked every `every` s; fails naming `what` at timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s")


def opts(**kw: Any) -> dict[str, Any]:
    """The SDK options of a run on the test cluster (``kubemap.map(fn, xs, **opts(...))``)."""
    return {
        "backend": "kubernetes",
        "namespace": NAMESPACE,
        "store": os.environ.get("KUBEMAP_STORE"),
        **kw,
    }


def get_task(custom: client.CustomObjectsApi, name: str) -> dict[str, Any] | None:
    try:
        return dict(
            custom.get_namespaced_custom_object(
                "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name
            )
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def wait_phase(
    custom: client.CustomObjectsApi, name: str, phases: set[str], timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        body = get_task(custom, name)
        if body and (body.get("status") or {}).get("phase") in phases:
            return body
        time.sleep(0.5)
    raise AssertionError(
        f"MapTask {name} not in {phases} after {timeout}s: {json.dumps((body or {}).get('status'))}"
    )


def task_pods(core: client.CoreV1Api, name: str) -> list[Any]:
    return list(core.list_namespaced_pod(NAMESPACE, label_selector=f"kubemap.io/task={name}").items)


class PodWatch:
    """Watches pods from before they exist (a task's, or any label selector's): every pod name
    seen, the pods not deleted (`live`), and the most non-terminal pods at any moment (what
    the parallelism cap promises)."""

    def __init__(self, core: client.CoreV1Api, task: str = "", *, selector: str = "") -> None:
        self.core = core
        self.selector = selector or f"kubemap.io/task={task}"
        self.seen: set[str] = set()
        self.live: set[str] = set()
        self.active: dict[str, bool] = {}
        self.most_active = 0
        self._stop = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        time.sleep(0.5)  # the watch is open before the task is created
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._watch.stop()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self._watch.stream(
                    self.core.list_namespaced_pod,
                    NAMESPACE,
                    label_selector=self.selector,
                    timeout_seconds=30,
                ):
                    self._record(event["type"], event["object"])
                    if self._stop.is_set():
                        return
            except Exception:
                if self._stop.is_set():
                    return
                time.sleep(0.2)

    def _record(self, kind: str, pod: Any) -> None:
        name = pod.metadata.name
        self.seen.add(name)
        if kind == "DELETED":
            self.live.discard(name)
        else:
            self.live.add(name)
        terminal = pod.status.phase in ("Succeeded", "Failed")
        self.active[name] = kind != "DELETED" and not terminal
        self.most_active = max(self.most_active, sum(self.active.values()))


def apply(body: dict[str, Any], tmp_path: Path) -> None:
    """`kubectl apply -f` of BODY, written as YAML: what a YAML user does."""
    path = tmp_path / f"{body['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(body))
    subprocess.run(
        [kubectl(), "apply", "-n", NAMESPACE, "-f", str(path)], check=True, capture_output=True
    )


def kubectl() -> str:
    found = subprocess.run(
        [str(REPO / "tests" / "tools" / "kube-tools")], capture_output=True, text=True
    )
    if found.returncode == 0 and found.stdout.strip():
        path = Path(found.stdout.strip().splitlines()[-1]) / "kubectl"
        if path.is_file():
            return str(path)
    pytest.skip("no kubectl: tests/tools/kube-tools could not provide one")
    raise AssertionError  # unreachable
