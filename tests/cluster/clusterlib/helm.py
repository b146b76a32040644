"""Install kubemap into the test cluster with its own Helm chart (charts/kubemap).

>>> CHART ENGINEER: ``chart_values`` below is the one place that maps the test cluster's facts
>>> (S3 endpoint, credentials Secret, store URL) onto the chart's values. Adjust its keys when
>>> values.yaml changes. Keys that values.yaml does not define are dropped with a warning, so a
>>> rename there shows up in ``testcluster up``'s output rather than as a schema failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .procs import free_ports
from .state import NAMESPACE, REGION, REPO, S3_SECRET, STORE

CHART = REPO / "charts" / "kubemap"
RELEASE = "kubemap"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chart_values(s3_endpoint: str) -> dict[str, Any]:
    """Values that point the operator (and the worker pods it creates) at the test cluster's S3.

    The node emulator runs pods as host processes, so the operator's ports are host ports:
    bind them to loopback and pick free ones, or two clusters on one machine would collide.
    """
    liveness, metrics, dispatcher, dashboard = free_ports(4)
    return {
        "operator": {"listenAddress": "127.0.0.1", "livenessPort": liveness},
        "dashboard": {"port": dashboard},  # on 127.0.0.1: the host's loopback here
        "metrics": {"port": metrics},
        # Pool workers are host processes too: they reach the dispatcher on loopback.
        "pools": {"port": dispatcher, "advertiseUrl": f"http://127.0.0.1:{dispatcher}"},
        "s3": {
            "endpoint": s3_endpoint,
            "region": REGION,
            "defaultStore": STORE,
            "existingSecret": S3_SECRET,  # created by `up` in kubemap-system and default
        },
    }


def helm_binary() -> Path | None:
    """$HELM, else the bin dir printed by tests/tools/kube-tools (which installs helm if missing)."""
    if os.environ.get("HELM"):
        return Path(os.environ["HELM"])
    tools = REPO / "tests" / "tools" / "kube-tools"
    if tools.is_file():
        run = subprocess.run([sys.executable, str(tools)], capture_output=True, text=True)
        if run.returncode == 0 and run.stdout.strip():
            helm = Path(run.stdout.strip().splitlines()[-1]) / "helm"
            if helm.is_file():
                return helm
        print(f"testcluster: tests/tools/kube-tools failed:\n{run.stderr}", file=sys.stderr)
    found = shutil.which("helm")
    return Path(found) if found else None


def _known(values: dict[str, Any], defaults: dict[str, Any], path: str = "") -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{path}{key}"
        if key not in defaults:
            print(
                f"testcluster: warning: charts/kubemap/values.yaml has no `{where}`; not set",
                file=sys.stderr,
            )
        elif isinstance(value, dict) and isinstance(defaults[key], dict):
            kept[key] = _known(value, defaults[key], where + ".")
        else:
            kept[key] = value
    return kept


def install(kubeconfig: Path, s3_endpoint: str, state: Path, log: Path) -> bool:
    """``helm install`` the chart when it and a helm binary exist; false (with a warning) if not."""
    if not (CHART / "Chart.yaml").is_file() or not (CHART / "values.yaml").is_file():
        print(
            "testcluster: warning: charts/kubemap is not complete yet; kubemap is not installed",
            file=sys.stderr,
        )
        return False
    helm = helm_binary()
    if helm is None:
        print(
            "testcluster: warning: no helm (set HELM or add tests/tools/kube-tools); kubemap is not installed",
            file=sys.stderr,
        )
        return False
    defaults = yaml.safe_load((CHART / "values.yaml").read_text()) or {}
    overrides = state / "kubemap-values.yaml"
    overrides.write_text(yaml.safe_dump(_known(chart_values(s3_endpoint), defaults)))
    cmd = [
        str(helm), "install", RELEASE, str(CHART), "--namespace", NAMESPACE,
        "--kubeconfig", str(kubeconfig), "--values", str(overrides),
    ]  # fmt: skip
    with log.open("ab") as out:
        run = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if run.returncode != 0:
        raise RuntimeError(f"helm install failed (exit {run.returncode}): {' '.join(cmd)}")
    return True
