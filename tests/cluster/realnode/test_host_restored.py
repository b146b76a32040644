"""``testcluster down`` leaves the host as ``up --real-node`` found it.

Starts its own cluster (own state dir) with the real node, runs a pod there so that kubelet,
containerd and CNI really change the host, checks that they did (the test can fail), then
``down`` and compares sysctls, iptables, mounts, cgroups, links and paths with the snapshot
taken before ``up``. Needs root and no other real node running, so it runs only when asked:
KUBEMAP_TEST_HOST_RESTORE=1 (``scripts/test --real-node`` does, after its own ``down``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clusterlib import hoststate
from realnodekit import IMAGE, ON_REAL_NODE

TESTCLUSTER = Path(__file__).resolve().parents[1] / "testcluster"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        os.environ.get("KUBEMAP_TEST_HOST_RESTORE") != "1",
        reason="starts its own real node: set KUBEMAP_TEST_HOST_RESTORE=1 (scripts/test --real-node)",
    ),
]


def test_down_undoes_every_host_change_of_the_real_node(tmp_path: Path) -> None:
    env = {**os.environ, "KUBEMAP_TESTCLUSTER_STATE": str(tmp_path / "state")}
    env.pop("KUBECONFIG", None)
    before = hoststate.snapshot()
    up = subprocess.run(
        [sys.executable, str(TESTCLUSTER), "up", "--real-node"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
        )
        from kubernetes import client, config

        config.load_kube_config(exports["KUBECONFIG"].strip("'"))
        core = client.CoreV1Api()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "host-probe"},
            "spec": {
                **ON_REAL_NODE,
                "restartPolicy": "Never",
                "containers": [
                    {"name": "main", "image": IMAGE, "command": ["python", "-c", "print(1)"]}
                ],
            },
        }
        core.create_namespaced_pod("default", pod)
        deadline = time.monotonic() + 120
        while core.read_namespaced_pod("host-probe", "default").status.phase != "Succeeded":
            assert time.monotonic() < deadline, "the probe pod did not run on the real node"
            time.sleep(0.5)
        during = hoststate.diff(before, hoststate.snapshot())
        kinds = {line.split()[0] for line in during}
        # What a real node does to a host, seen here: so the comparison below can fail.
        assert {"sysctl", "cgroup", "link", "mount"} <= kinds, during
        assert any("rules changed" in line for line in during), during
    finally:
        down = subprocess.run(
            [sys.executable, str(TESTCLUSTER), "down"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert down.returncode == 0, down.stderr[-4000:]
    assert hoststate.diff(before, hoststate.snapshot()) == []
