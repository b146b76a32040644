"""`kubectl port-forward` to the operator pod, with the Kubernetes Python client: what
`kubemap dashboard` uses to reach the dashboard the operator serves on its loopback.

A listening socket on 127.0.0.1 accepts local connections; each one opens its own
pods/portforward stream through the API server (kubernetes.stream.portforward) and bytes are
relayed both ways until either side closes. Who may open the stream is the RBAC's say:
`create` on `pods/portforward` in the operator's namespace.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward

from kubemap.backends.kubernetes.client import Cluster
from kubemap.backends.kubernetes.discovery import candidate_namespaces
from kubemap.errors import ClusterError

OPERATOR_SELECTOR = "app.kubernetes.io/component=operator"  # the chart's; see _is_kubemap
ENV_DASHBOARD_PORT = "KUBEMAP_DASHBOARD_PORT"
DEFAULT_DASHBOARD_PORT = 8788
CHUNK = 64 * 1024


@dataclass(frozen=True)
class OperatorPod:
    namespace: str
    name: str
    dashboard_port: int  # 0: the dashboard is off


def _env_port(pod: Any) -> int:
    for container in pod.spec.containers or []:
        for env in container.env or []:
            if env.name == ENV_DASHBOARD_PORT:
                try:
                    return int(env.value or 0)
                except ValueError:
                    return 0
    return DEFAULT_DASHBOARD_PORT


def _is_kubemap(pod: Any) -> bool:
    """Other operators use the component label too: ours runs `python -m kubemap_operator`."""
    return any(
        "kubemap_operator" in " ".join([*(c.command or []), *(c.args or [])])
        for c in pod.spec.containers or []
    )


def find_operator(cluster: Cluster) -> OperatorPod:
    """The running kubemap operator pod: in $KUBEMAP_OPERATOR_NAMESPACE, else the current
    namespace or kubemap-system (where the chart's discovery looks)."""
    looked, refused = [], []
    for ns in candidate_namespaces(cluster.namespace):
        try:
            pods = cluster.call(
                "list the kubemap operator's pods",
                cluster.core.list_namespaced_pod,
                ns,
                label_selector=OPERATOR_SELECTOR,
            )
        except ApiException as exc:
            if exc.status == 403:
                refused.append(ns)
                continue
            raise ClusterError(f"listing pods in namespace {ns} failed: {exc.reason}") from None
        looked.append(ns)
        running = [
            p for p in pods.items if (p.status and p.status.phase) == "Running" and _is_kubemap(p)
        ]
        if running:
            pod = running[0]
            return OperatorPod(ns, pod.metadata.name, _env_port(pod))
    why = [f"no running kubemap operator pod in namespace(s) {', '.join(looked)}"] if looked else []
    if refused:
        why.append(f"not allowed to list pods in {', '.join(refused)} (RBAC: list pods)")
    raise ClusterError(
        "; ".join(why) + ": is the kubemap chart installed? Set KUBEMAP_OPERATOR_NAMESPACE "
        "to the namespace it is installed in"
    )


class Forwarder:
    """127.0.0.1:<local port> -> <pod>:<port> through the API server, until close()."""

    def __init__(self, cluster: Cluster, pod: OperatorPod) -> None:
        self.cluster = cluster
        self.pod = pod
        self._open_lock = threading.Lock()  # portforward() swaps the client's request method
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self.connections = 0  # streams opened (what tests count)

    def open_stream(self) -> Any:
        """One pods/portforward stream; ClusterError naming the permission when refused."""
        with self._open_lock:
            try:
                stream = portforward(
                    self.cluster.core.connect_get_namespaced_pod_portforward,
                    self.pod.name,
                    self.pod.namespace,
                    ports=str(self.pod.dashboard_port),
                )
            except ApiException as exc:
                raise self._refused(exc) from None
            except AttributeError as exc:
                # The client re-raises a failed websocket handshake (an ApiException with no
                # body) as AttributeError from `e.body.decode()`: the cause is its context.
                if not isinstance(exc.__context__, ApiException):
                    raise
                raise self._refused(exc.__context__) from None
        self.connections += 1
        return stream

    def _refused(self, exc: ApiException) -> ClusterError:
        reason = str(exc.reason or exc).split(" -+-+- ")[0]  # not the response's headers
        where = f"pod {self.pod.namespace}/{self.pod.name}"
        if "403" in reason or exc.status == 403:
            return ClusterError(
                f"port-forward to {where} refused: you need `create` on `pods/portforward` in "
                f"namespace {self.pod.namespace} (RBAC), which is who may see the dashboard"
            )
        return ClusterError(
            f"port-forward to {where} failed ({reason[:200]}): the API server or the node "
            "does not serve port-forward (`kubectl port-forward` fails the same way)"
        )

    def check(self) -> None:
        """Open and close one stream: fails fast on RBAC or a node without port-forward."""
        stream = self.open_stream()
        with contextlib.suppress(Exception):
            stream.close()

    def listen(self, port: int = 0) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))
        except OSError as exc:
            listener.close()
            raise ClusterError(
                f"cannot listen on 127.0.0.1:{port} ({exc.strerror}): pick another --port"
            ) from None
        listener.listen(16)
        listener.settimeout(0.5)
        self._listener = listener
        threading.Thread(target=self._accept, name="kubemap-portforward", daemon=True).start()
        return int(listener.getsockname()[1])

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                local, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay, args=(local,), daemon=True).start()

    def _relay(self, local: socket.socket) -> None:
        try:
            stream = self.open_stream()
        except ClusterError:
            local.close()
            return
        remote = stream.socket(self.pod.dashboard_port)
        try:
            for _ in _pump(local, remote, self._stop):
                pass
        finally:
            with contextlib.suppress(Exception):
                stream.close()
            local.close()


def _pump(local: socket.socket, remote: Any, stop: threading.Event) -> Iterator[int]:
    """Copy bytes both ways until either side closes; yields the bytes moved each round."""
    pairs = {local: remote, remote: local}
    while not stop.is_set():
        readable, _, _ = select.select([local, remote], [], [], 0.5)
        for source in readable:
            try:
                data = source.recv(CHUNK)
            except OSError:
                return
            if not data:
                return
            pairs[source].sendall(data)
            yield len(data)
