"""Kueue's LocalQueues as a submit sees them: with queue= given, refuse before anything is
uploaded a queue that does not exist (its pods would wait gated for ever) and a cluster
without Kueue (the label would be ignored, and the quota with it). The operator checks the
same for MapTasks applied as YAML (tasks/reconcile.py); the messages are shared
(kubemap.resources.kueue)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubemap.backends.kubernetes.client import message_of
from kubemap.errors import ClusterError, ConfigError
from kubemap.resources.kueue import (
    GROUP,
    LOCAL_QUEUES,
    VERSION,
    kueue_absent_message,
    missing_queue_message,
)

if TYPE_CHECKING:
    from kubemap.backends.kubernetes.client import Cluster


def require_queue(cluster: Cluster, queue: str) -> None:
    """ConfigError unless LocalQueue `queue` exists in the task's namespace. A user who may
    not read LocalQueues (403) is not blocked: the operator then checks it."""
    try:
        cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, LOCAL_QUEUES, queue
        )
        return
    except ApiException as exc:
        if exc.status == 403:
            return
        if exc.status != 404:
            raise ClusterError(
                f"reading LocalQueue {queue} in {cluster.namespace} failed: {message_of(exc)}"
            ) from None
    except (HTTPError, OSError) as exc:
        raise ClusterError(
            f"cannot reach the Kubernetes API at {cluster.host} to read LocalQueue {queue} "
            f"({type(exc).__name__})"
        ) from None
    try:  # 404: the queue is missing, or Kueue's API is (discovery answers every user)
        cluster.custom.get_api_resources(GROUP, VERSION)
    except ApiException as exc:
        if exc.status == 404:
            raise ConfigError(kueue_absent_message(queue) + "; nothing was submitted") from None
        raise ClusterError(f"reading Kueue's API failed: {message_of(exc)}") from None
    raise ConfigError(missing_queue_message(queue, cluster.namespace) + "; nothing was submitted")
