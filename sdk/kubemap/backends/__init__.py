"""Where runs execute: `local` (processes on this machine, the default) and `kubernetes`
(a MapTask reconciled by the operator). Both execute the plan of `kubemap.core`.

`get_backend(name)` imports a backend on first use, so a local run never imports the
Kubernetes client.
"""

from __future__ import annotations

import importlib

from kubemap.backends.base import Backend, RunHandle
from kubemap.errors import ConfigError

_MODULES = {
    "local": ("kubemap.backends.local.backend", "LocalBackend"),
    "kubernetes": ("kubemap.backends.kubernetes.backend", "KubernetesBackend"),
}


def get_backend(name: str) -> Backend:
    """The backend called `name` ("local" or "kubernetes")."""
    try:
        module_name, class_name = _MODULES[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}: use 'local' or 'kubernetes'") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in (module_name, "kubernetes"):
            raise
        raise ConfigError(
            f"backend={name!r} is not available in this install of kubemap ({exc.name} is "
            "missing): reinstall kubemap with its dependencies, or use backend='local'"
        ) from None
    backend: Backend = getattr(module, class_name)()
    return backend


__all__ = ["Backend", "RunHandle", "get_backend"]
