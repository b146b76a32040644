"""What starting a container needs: the shared context, the pod's directory, env and argv."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from .api import Api, ClusterInfo
from .containers import Backoff
from .envresolve import EnvConfigError, Lookup, container_argv, decode_secret, resolve_env
from .events import EventRecorder
from .processes import ContainerPaths, ProcessRegistry

# KUBEMAP_TESTCLUSTER_ID marks processes of one test cluster, so `testcluster down` finds strays.
PASSTHROUGH_ENV = ("LANG", "LC_ALL", "TZ", "KUBEMAP_TESTCLUSTER_ID")


@dataclass(frozen=True)
class Context:
    """What every pod worker shares."""

    api: Api
    cluster: ClusterInfo
    node_name: str
    host_ip: str
    allocatable: Mapping[str, str]
    pods_dir: Path
    registry: ProcessRegistry
    backoff: Backoff
    base_path: str
    events: EventRecorder
    #: Set on SIGTERM: workers stop driving pods and posting status; the registry kills.
    stopping: threading.Event


def pod_dir_for(pods_dir: Path, pod: Mapping[str, Any]) -> Path:
    meta = pod["metadata"]
    return pods_dir / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"


def api_lookup(api: Api) -> Lookup:
    """Secrets and ConfigMaps from the API server, each read once per container start."""
    cache: dict[tuple[str, str, str], Mapping[str, str] | None] = {}

    def lookup(kind: str, namespace: str, name: str) -> Mapping[str, str] | None:
        key = (kind, namespace, name)
        if key not in cache:
            plural = "secrets" if kind == "Secret" else "configmaps"
            try:
                obj = api.get_or_none(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
            except ApiException as exc:
                raise EnvConfigError(
                    f"reading {kind} {namespace}/{name}: {exc.status} {exc.reason}"
                ) from exc
            except (HTTPError, OSError) as exc:
                # The API server is unreachable (restarting): kubelet reports the same
                # CreateContainerConfigError and retries; it never gives the pod up.
                raise EnvConfigError(
                    f"reading {kind} {namespace}/{name}: API server unreachable "
                    f"({type(exc).__name__})"
                ) from exc
            if obj is None:
                cache[key] = None
            elif kind == "Secret":
                cache[key] = decode_secret(obj)
            else:
                cache[key] = dict(obj.get("data") or {})
        return cache[key]

    return lookup


@dataclass(frozen=True)
class Launch:
    argv: list[str]  # empty: the container relies on the image's entrypoint
    env: dict[str, str]


def prepare_launch(
    ctx: Context,
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    paths: ContainerPaths,
    kubeconfig: Path | None,
) -> Launch:
    """The container's argv and full environment; raise EnvConfigError if a reference is missing."""
    try:
        defined = resolve_env(
            pod,
            container,
            lookup=api_lookup(ctx.api),
            pod_ip=ctx.host_ip,
            host_ip=ctx.host_ip,
            allocatable=ctx.allocatable,
        )
    except ValueError as exc:  # a malformed quantity in resourceFieldRef
        raise EnvConfigError(str(exc)) from exc
    env = {
        "PATH": ctx.base_path,
        "HOME": str(paths.pod_dir),
        "HOSTNAME": str(pod["metadata"]["name"]),
        "KUBEMAP_TERMINATION_LOG": str(paths.termination_log),
    }
    env.update({k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ})
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    env.update(defined)
    mounts = empty_dir_mounts(pod, container, paths.pod_dir)
    argv = [rebase_path(arg, mounts) for arg in container_argv(container, defined)]
    # Only what the pod itself defines is rebased: the host's own env (PATH to the venv, which
    # may well live under /tmp, an emptyDir's usual mountPath) must reach the process as is.
    env.update({k: rebase_path(v, mounts) for k, v in defined.items()})
    return Launch(argv, env)


def empty_dir_mounts(
    pod: Mapping[str, Any], container: Mapping[str, Any], pod_dir: Path
) -> dict[str, Path]:
    """emptyDir volumes as directories under the pod's dir: {mountPath: host dir}. There is
    no mount namespace here, so the paths the container is told (env, argv) are rewritten."""
    empty = {
        v.get("name"): v for v in (pod.get("spec") or {}).get("volumes") or [] if "emptyDir" in v
    }
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        if mount.get("name") in empty and mount.get("mountPath"):
            host = pod_dir / "volumes" / str(mount["name"])
            host.mkdir(parents=True, exist_ok=True)
            mounts[str(mount["mountPath"]).rstrip("/")] = host
    return mounts


def rebase_path(value: str, mounts: Mapping[str, Path]) -> str:
    for mount_path, host in mounts.items():
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(host) + value[len(mount_path) :]
    return value
