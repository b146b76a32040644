"""A container's environment, resolved the way the kubelet resolves it.

Pure functions over plain pod dicts; Secrets and ConfigMaps come through a lookup
callable so that tests can hand in dicts. Mirrors kubelet's makeEnvironmentVariables:
`envFrom` first (later sources win), then `env` in order, each `value` expanded with
`$(VAR)` against the variables defined so far; `command`/`args` are expanded against the
final environment. An undefined `$(VAR)` stays as written, `$$` is an escaped `$`.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from .quantity import parse_quantity

#: lookup(kind, namespace, name) -> the object's string data, or None when it does not exist.
#: kind is "Secret" (data already base64-decoded) or "ConfigMap".
Lookup = Callable[[str, str, str], Mapping[str, str] | None]

Pod = Mapping[str, Any]


class EnvConfigError(Exception):
    """A non-optional Secret/ConfigMap (or key) is missing: kubelet's CreateContainerConfigError."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand `$(VAR)` the way Kubernetes does (third_party/forked/golang/expansion)."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:close]
                    out.append(env.get(name, f"$({name})"))
                    advance = close + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


_FIELD_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


def field_value(pod: Pod, path: str, *, pod_ip: str, host_ip: str) -> str:
    """Value of a downward-API fieldRef.fieldPath for env."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    match = _FIELD_SUBSCRIPT.match(path)
    if match:
        section, key = match.groups()
        return str((meta.get(section) or {}).get(key, ""))
    raise EnvConfigError(f"unsupported fieldRef.fieldPath {path!r} for an environment variable")


def resource_value(
    pod: Pod, container_name: str, ref: Mapping[str, Any], allocatable: Mapping[str, str]
) -> str:
    """Value of a resourceFieldRef; unset limits default to the node's allocatable, like kubelet."""
    target = ref.get("containerName") or container_name
    containers = list((pod.get("spec") or {}).get("containers") or [])
    containers += list((pod.get("spec") or {}).get("initContainers") or [])
    spec = next((c for c in containers if c.get("name") == target), None)
    if spec is None:
        raise EnvConfigError(f"resourceFieldRef names unknown container {target!r}")
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise EnvConfigError(f"unsupported resourceFieldRef.resource {resource!r}")
    values = (spec.get("resources") or {}).get(kind) or {}
    raw = values.get(name)
    if raw is None and kind == "limits":
        raw = allocatable.get(name)
    amount = parse_quantity(raw) if raw is not None else parse_quantity(0)
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor == 0:
        raise EnvConfigError(f"resourceFieldRef {resource!r} has a zero divisor")
    return str(math.ceil(amount / divisor))


def _valid_env_name(name: str) -> bool:
    # Relaxed validation (KEP-4369): printable ASCII except '='.
    return bool(name) and "=" not in name and all(32 <= ord(ch) < 127 for ch in name)


def _lookup_or_error(
    lookup: Lookup, kind: str, namespace: str, name: str, optional: bool
) -> Mapping[str, str] | None:
    data = lookup(kind, namespace, name)
    if data is None and not optional:
        raise EnvConfigError(f'{kind.lower()} "{name}" not found')
    return data


def resolve_env(
    pod: Pod,
    container: Mapping[str, Any],
    *,
    lookup: Lookup,
    pod_ip: str,
    host_ip: str,
    allocatable: Mapping[str, str],
) -> dict[str, str]:
    """The variables a container defines (envFrom + env), in kubelet's precedence order."""
    namespace = str((pod.get("metadata") or {}).get("namespace") or "default")
    name = str(container.get("name", ""))
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix") or "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(key)
            if ref is None:
                continue
            data = _lookup_or_error(lookup, kind, namespace, ref["name"], bool(ref.get("optional")))
            for k, v in (data or {}).items():
                if _valid_env_name(prefix + k):
                    env[prefix + k] = v
    for var in container.get("env") or []:
        var_name = str(var["name"])
        if "value" in var or "valueFrom" not in var:
            env[var_name] = expand(str(var.get("value") or ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[var_name] = field_value(
                pod, source["fieldRef"]["fieldPath"], pod_ip=pod_ip, host_ip=host_ip
            )
        elif "resourceFieldRef" in source:
            env[var_name] = resource_value(pod, name, source["resourceFieldRef"], allocatable)
        else:
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                ref = source.get(key)
                if ref is None:
                    continue
                optional = bool(ref.get("optional"))
                data = _lookup_or_error(lookup, kind, namespace, ref["name"], optional)
                if data is None:
                    break
                if ref["key"] not in data:
                    if optional:
                        break
                    raise EnvConfigError(
                        f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}"
                    )
                env[var_name] = data[ref["key"]]
                break
            else:
                raise EnvConfigError(
                    f"environment variable {var_name!r} has an unsupported valueFrom"
                )
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded; empty when the container relies on the image entrypoint."""
    command = [expand(str(part), env) for part in container.get("command") or []]
    args = [expand(str(part), env) for part in container.get("args") or []]
    return command + args if command else []


def decode_secret(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's data as strings (env values cannot hold arbitrary bytes)."""
    return {
        k: base64.b64decode(v).decode("utf-8", errors="replace")
        for k, v in (secret.get("data") or {}).items()
    }
