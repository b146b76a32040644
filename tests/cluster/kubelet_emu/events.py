"""Warning Events about pods, as kubelet and kube-scheduler record them (`kubectl describe pod`).

Only warnings are recorded (Failed, BackOff, FailedMount, DeadlineExceeded, FailedScheduling):
they explain a stuck pod, and skipping the routine Normal events keeps the API server's
load per pod low. Events are posted from a background thread and never block a pod.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .api import Api
from .podstatus import rfc3339

log = logging.getLogger("kubelet_emu.events")


class EventRecorder:
    def __init__(self, api: Api, node_name: str) -> None:
        self.api = api
        self.node_name = node_name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events")

    def warn(
        self, pod: Mapping[str, Any], reason: str, message: str, component: str = "kubelet"
    ) -> None:
        meta = pod["metadata"]
        now = time.time()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": component, "host": self.node_name},
            "firstTimestamp": rfc3339(now),
            "lastTimestamp": rfc3339(now),
            "count": 1,
            "reportingComponent": component,
            "reportingInstance": self.node_name,
        }
        self._pool.submit(self._post, event)

    def _post(self, event: dict[str, Any]) -> None:
        try:
            self.api.create(f"/api/v1/namespaces/{event['metadata']['namespace']}/events", event)
        except Exception as exc:  # an event is a courtesy; losing one is harmless
            log.debug("could not record event %s: %s", event["reason"], exc)
