"""Every controller's kopf handlers in one registry: the MapTask (pod) controller, and the
pool side (tasks with spec.pool, WorkerPools, the dispatcher). Each routes MapTasks on
spec.pool, so a task has exactly one controller. The dashboard only reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from kubemap_operator.dashboard import handlers as dashboard
from kubemap_operator.kubeapi import KubeApi
from kubemap_operator.pools import handlers as pools
from kubemap_operator.settings import Settings
from kubemap_operator.tasks import handlers as tasks


def build_registry(
    settings: Settings,
    api_factory: Callable[[], KubeApi] = KubeApi,
    *,
    login: Callable[..., Any] | None = None,
) -> kopf.OperatorRegistry:
    registry, _ = tasks.build_registry(settings, api_factory, login=login)
    dispatcher = pools.register(registry, settings, api_factory, post_event=tasks.post_kopf_event)
    dashboard.register(registry, settings, dispatcher)
    return registry
