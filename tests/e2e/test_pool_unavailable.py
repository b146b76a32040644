"""A MapTask with spec.pool where the operator runs no dispatcher (issue 18 #13): the chart with
pools.enabled=false. It used to run in pods shaped for a pool (one item each, parallelism
10,000); now it fails at once with a PoolUnavailable condition naming the fix, no pod is
made, and the SDK raises ConfigError with that message.

The chart's operator of the test cluster runs the dispatcher and watches every namespace, and
the test must not reinstall it (other tests share it). So this test starts a second operator,
from this checkout, with the dispatcher off (KUBEMAP_DISPATCHER_PORT=0) and watching only a
namespace of its own. The chart's operator sees the task too, but only waits for pool workers
that never come and then follows the Failed status; it makes no pod either way.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubemap
import pytest
import yaml
from e2ekit import REPO, kubectl
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.usefixtures("kubemap_installed"),
]


def maptask(name: str, pool: str) -> dict[str, Any]:
    store = os.environ.get("KUBEMAP_STORE", "s3://kubemap/tasks")
    return {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": name},
        "spec": {
            "mode": "Function",
            "count": 6,
            "itemsPerPod": 1,
            "parallelism": 10000,
            "pool": pool,
            "store": {"url": store},
        },
    }


def test_a_pool_task_on_an_operator_without_the_dispatcher_is_refused_naming_the_fix(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, tmp_path: Path
) -> None:
    ns = f"nodispatch-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": ns}})
    log = tmp_path / "operator.log"
    env = {
        **os.environ,
        "KUBEMAP_DISPATCHER_PORT": "0",
        "KUBEMAP_WATCH_NAMESPACES": ns,
        "KUBEMAP_METRICS_PORT": "0",
        "KUBEMAP_LIVENESS_PORT": "0",
        "KUBEMAP_LISTEN_ADDRESS": "127.0.0.1",
        "KUBEMAP_RECONCILE_INTERVAL": "2",
    }
    with log.open("ab") as out:
        operator = subprocess.Popen(
            [sys.executable, "-m", "kubemap_operator"], env=env, stdout=out,
            stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    name = "pooled"
    try:
        path = tmp_path / "task.yaml"
        path.write_text(yaml.safe_dump(maptask(name, "scorers")))
        subprocess.run([kubectl(), "apply", "-n", ns, "-f", str(path)], check=True,
                       capture_output=True)  # fmt: skip
        deadline, status = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            body = custom.get_namespaced_custom_object(
                "kubemap.io", "v1alpha1", ns, "maptasks", name
            )
            status = body.get("status") or {}
            if status.get("phase") == "Failed":
                break
            time.sleep(0.5)
        assert status.get("phase") == "Failed", (status, log.read_text()[-2000:])
        assert status["conditions"][-1]["reason"] == "PoolUnavailable", status
        for fix in ("pools.enabled", "spec.pool", "'scorers'"):
            assert fix in status["message"], (fix, status["message"])
        time.sleep(3)  # a resync or two later: still no pod, still refused
        pods = core.list_namespaced_pod(ns, label_selector=f"kubemap.io/task={name}").items
        assert [p.metadata.name for p in pods] == []
        with pytest.raises(kubemap.ConfigError, match=r"pools\.enabled"):
            kubemap.MapRun.attach(name, backend="kubernetes", namespace=ns).results()
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(20)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        with contextlib.suppress(ApiException):
            custom.delete_namespaced_custom_object("kubemap.io", "v1alpha1", ns, "maptasks", name)
        core.delete_namespace(ns)
