"""logkeeper: what a failed pod said survives its deletion, bounded in size and count."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

from kubemap_operator.tasks import logkeeper
from kubernetes.client.exceptions import ApiException


def failed_pod(index: int, attempt: int = 0, message: str = "boom") -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"t-{index}-{attempt}",
            "labels": {"kubemap.io/task": "t", "kubemap.io/index": str(index)},
            "annotations": {"kubemap.io/attempt": str(attempt)},
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": 3, "reason": "Error", "message": message}}}
            ],
        },
    }


class FakeCore:
    """CoreV1Api's ConfigMap and log calls over dicts; counts the writes."""

    def __init__(self, logs: dict[str, str] | None = None, log_status: int | None = None) -> None:
        self.maps: dict[str, dict[str, Any]] = {}
        self.logs = logs or {}
        self.log_status = log_status
        self.writes = 0
        self.log_reads = 0

    def read_namespaced_pod_log(self, name: str, namespace: str, **kw: Any) -> Any:
        self.log_reads += 1
        if self.log_status:
            raise ApiException(status=self.log_status, reason="Internal Server Error")
        # As the real client answers with _preload_content=False: the raw HTTP response.
        assert kw.get("_preload_content") is False, "a decoded log reads as b'...' (#2596)"
        return SimpleNamespace(data=self.logs.get(name, "").encode())

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        if name not in self.maps:
            raise ApiException(status=404, reason="Not Found")
        return SimpleNamespace(data=dict(self.maps[name]["data"]))

    def create_namespaced_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        self.writes += 1
        self.maps[body["metadata"]["name"]] = body

    def patch_namespaced_config_map(self, name: str, namespace: str, patch: dict[str, Any]) -> None:
        self.writes += 1
        data = self.maps[name]["data"]
        for key, value in patch["data"].items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value


TASK = {"apiVersion": "kubemap.io/v1alpha1", "metadata": {"name": "t", "uid": "u-1"}}
LOG = logging.getLogger("test")


def keep(core: FakeCore, pods: list[dict[str, Any]]) -> int:
    return asyncio.run(logkeeper.keep_failed(SimpleNamespace(core=core), "ns", TASK, pods, LOG))


def test_a_failed_pod_is_kept_with_its_message_and_log_tail_owned_by_the_task() -> None:
    core = FakeCore(logs={"t-7-1": "line\n" * 5000})
    ok = {**failed_pod(1), "status": {"phase": "Succeeded"}}
    assert keep(core, [failed_pod(7, attempt=1, message="bad input 7"), ok]) == 1
    cm = core.maps["t-logs"]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    text = cm["data"]["7"]
    assert text.startswith("pod t-7-1 (attempt 1) exited with code 3 (Error)")
    assert "bad input 7" in text and text.endswith("line\n")
    assert len(text.encode()) < logkeeper.TAIL_BYTES + logkeeper.MESSAGE_BYTES + 300
    assert cm["data"]["order"] == "7" and "1" not in cm["data"]


def test_only_the_newest_indices_are_kept_and_one_write_per_pass() -> None:
    core = FakeCore()
    keep(core, [failed_pod(i) for i in range(15)])
    assert core.writes == 1
    keep(core, [failed_pod(i) for i in range(15, 30)])
    assert core.writes == 2
    data = core.maps["t-logs"]["data"]
    kept = [str(i) for i in range(10, 30)]
    assert data["order"] == ",".join(kept)
    assert set(data) == {"order", *kept}
    assert core.log_reads == 30


def test_unreadable_logs_keep_the_termination_message_and_say_why() -> None:
    core = FakeCore(log_status=500)
    keep(core, [failed_pod(3, message="Traceback...\nValueError: bad input 3")])
    text = core.maps["t-logs"]["data"]["3"]
    assert "ValueError: bad input 3" in text
    assert "its log could not be read: HTTP 500 Internal Server Error" in text


def test_a_broken_api_never_breaks_the_reconcile() -> None:
    class Broken(FakeCore):
        def create_namespaced_config_map(self, namespace: str, body: dict[str, Any]) -> None:
            raise ApiException(status=403, reason="Forbidden")

    assert keep(Broken(), [failed_pod(1)]) == 0
    assert keep(FakeCore(), []) == 0
