"""The parts of a pod spec that task pods and warm-pool worker pods build the same way: the
chart's defaults (pull policy, resources, security contexts) under the user's own settings,
and where the pod may run (service account, node selector, tolerations)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any


def apply_container_defaults(
    container: dict[str, Any],
    defaults: Mapping[str, Any],
    *,
    pull: str | None,
    resources: Mapping[str, Any] | None,
) -> None:
    """The user's pull policy and resources win over the chart's; the security context is
    always the chart's (the restricted profile the namespace may enforce)."""
    pull = pull or defaults.get("imagePullPolicy")
    if pull:
        container["imagePullPolicy"] = pull
    resources = resources if resources is not None else defaults.get("resources")
    if resources:
        container["resources"] = copy.deepcopy(dict(resources))
    if defaults.get("securityContext"):
        container["securityContext"] = copy.deepcopy(dict(defaults["securityContext"]))


def apply_pod_placement(
    pod_spec: dict[str, Any],
    defaults: Mapping[str, Any],
    *,
    service_account: str | None,
    node_selector: Mapping[str, str] | None,
    tolerations: Sequence[Mapping[str, Any]] | None,
) -> None:
    if defaults.get("podSecurityContext"):
        pod_spec["securityContext"] = copy.deepcopy(dict(defaults["podSecurityContext"]))
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = copy.deepcopy(list(tolerations))
