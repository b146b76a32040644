"""A thin dict-in, dict-out layer over the kubernetes client's HTTP machinery, plus list+watch.

The generated models are skipped on purpose: deserializing pods into them is slow, and some
responses (Binding) do not deserialize at all. Authentication, TLS and connection pooling
are the client's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("kubelet_emu.api")

Obj = dict[str, Any]
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


@dataclass(frozen=True)
class ClusterInfo:
    """What a pod's kubeconfig needs to reach the API server."""

    server: str
    ca_pem: bytes | None
    insecure: bool


def cluster_info(kubeconfig: Path, server_override: str | None) -> ClusterInfo:
    doc = yaml.safe_load(kubeconfig.read_text())
    current = doc.get("current-context")
    contexts = {c["name"]: c["context"] for c in doc.get("contexts") or []}
    clusters = {c["name"]: c["cluster"] for c in doc.get("clusters") or []}
    context: dict[str, Any] = contexts.get(current) or next(iter(contexts.values()), {})
    cluster = clusters.get(context.get("cluster")) or next(iter(clusters.values()))
    ca: bytes | None = None
    if cluster.get("certificate-authority-data"):
        import base64

        ca = base64.b64decode(cluster["certificate-authority-data"])
    elif cluster.get("certificate-authority"):
        ca_path = Path(cluster["certificate-authority"])
        if not ca_path.is_absolute():
            ca_path = kubeconfig.parent / ca_path
        ca = ca_path.read_bytes()
    return ClusterInfo(
        server=server_override or cluster["server"],
        ca_pem=ca,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


class Api:
    def __init__(
        self, kubeconfig: Path, server_override: str | None = None, pool_size: int = 64
    ) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        if server_override:
            cfg.host = server_override
        cfg.connection_pool_maxsize = pool_size
        self.client = client.ApiClient(cfg)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] = 30,
        stream: bool = False,
    ) -> Any:
        resp = self.client.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        if stream:
            return resp
        data = resp.data
        return json.loads(data) if data else None

    def get(self, path: str, **query: Any) -> Obj:
        return self.request("GET", path, query=query)  # type: ignore[no-any-return]

    def get_or_none(self, path: str) -> Obj | None:
        try:
            return self.get(path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body=body)  # type: ignore[no-any-return]

    def patch(self, path: str, body: Obj, content_type: str = SMP) -> Obj:
        return self.request("PATCH", path, body=body, content_type=content_type)  # type: ignore[no-any-return]

    def delete(self, path: str, body: Obj | None = None) -> None:
        self.request("DELETE", path, body=body)


def pod_path(namespace: str, name: str, sub: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}" + (f"/{sub}" if sub else "")


def delete_pod(api: Api, pod: Mapping[str, Any]) -> None:
    """The kubelet's final delete: grace period 0, only this incarnation of the pod (uid)."""
    meta = pod["metadata"]
    body = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "gracePeriodSeconds": 0,
        "preconditions": {"uid": meta["uid"]},
    }
    try:
        api.delete(pod_path(meta["namespace"], meta["name"]), body)
        log.info("%s/%s: deleted", meta["namespace"], meta["name"])
    except ApiException as exc:
        if exc.status not in (404, 409):
            raise


class Handler:
    """What a reflector feeds: a full list (after every relist), then watch events."""

    def on_list(self, items: list[Obj]) -> None:
        raise NotImplementedError

    def on_event(self, kind: str, obj: Obj) -> None:
        raise NotImplementedError


class Reflector(threading.Thread):
    """List, then watch from the list's resourceVersion; relist on 410 Gone or repeated failure."""

    def __init__(
        self, api: Api, path: str, field_selector: str, handler: Handler, name: str
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.api = api
        self.path = path
        self.field_selector = field_selector
        self.handler = handler
        self.synced = threading.Event()

    def _list(self) -> str:
        items: list[Obj] = []
        cont = ""
        while True:
            query: dict[str, Any] = {"fieldSelector": self.field_selector, "limit": 500}
            if cont:
                query["continue"] = cont
            page = self.api.get(self.path, **query)
            items.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue") or ""
            if not cont:
                break
        self.handler.on_list(items)
        self.synced.set()
        return str(page["metadata"]["resourceVersion"])

    def _watch(self, rv: str) -> str | None:
        """Watch until the server closes the stream; return the new rv, or None to relist."""
        resp = self.api.request(
            "GET",
            self.path,
            query={
                "watch": "true",
                "fieldSelector": self.field_selector,
                "resourceVersion": rv,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": 240,
            },
            timeout=(10, 300),
            stream=True,
        )
        try:
            for line in iter_resp_lines(resp):
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    log.info("%s: watch error %s, relisting", self.name, obj.get("message"))
                    return None
                rv = obj.get("metadata", {}).get("resourceVersion") or rv
                if kind != "BOOKMARK":
                    self.handler.on_event(kind, obj)
        finally:
            resp.release_conn()
        return rv

    def run(self) -> None:
        rv: str | None = None
        failures = 0
        while True:
            try:
                if rv is None:
                    rv = self._list()
                rv = self._watch(rv)
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("%s: %s (attempt %d)", self.name, exc, failures)
                if failures >= 3 or (isinstance(exc, ApiException) and exc.status == 410):
                    rv = None
                time.sleep(min(5.0, 0.5 * failures))


def retrying(what: str, action: Callable[[], Any], attempts: int = 5) -> Any:
    """Run an API action, retrying transient failures (connection errors, 5xx, 429)."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except ApiException as exc:
            if exc.status is not None and exc.status < 500 and exc.status != 429:
                raise
            err: Exception = exc
        except Exception as exc:
            err = exc
        log.warning("%s failed (attempt %d/%d): %s", what, attempt, attempts, err)
        time.sleep(0.5 * attempt)
    raise RuntimeError(f"{what} failed {attempts} times; is the API server up?")
