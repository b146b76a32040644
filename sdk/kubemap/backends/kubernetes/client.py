"""The SDK's one Kubernetes client layer, used by the Kubernetes backend and the CLI.

`Cluster` wraps the official client for the current kubeconfig (or the in-cluster service
account) and turns unreachable servers, a missing CRD and refusals into ClusterErrors with
a hint. `ClusterClient` is the typed Protocol the backend and the CLI code against, and the
one test fakes implement.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubemap.contract import GROUP, PLURAL, VERSION, task_label
from kubemap.errors import ClusterError, ConfigError, api_error_message

INSTALL_HINT = (
    "install kubemap into the cluster first: "
    "helm install kubemap charts/kubemap --namespace kubemap-system --create-namespace"
)
# What a caller without a cluster can do instead, for the SDK's runs.
LOCAL_ALTERNATIVE = "use backend='local'"
T = TypeVar("T")
# Ask the API server for an object's metadata only (a Secret's data is never sent).
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class ClusterClient(Protocol):
    """What the SDK does with a cluster: MapTasks, their pods and logs."""

    @property
    def namespace(self) -> str: ...
    @property
    def host(self) -> str: ...

    def get(self, name: str) -> dict[str, Any] | None: ...
    def list(self) -> builtins.list[dict[str, Any]]: ...
    def create(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def suspend(self, name: str) -> None: ...
    def task_pods(self, name: str) -> builtins.list[dict[str, Any]]: ...
    def pod_log(self, pod: str, *, tail_lines: int | None = None) -> str: ...


@dataclass(frozen=True)
class Cluster:
    """An API client for the current kubeconfig (or the in-cluster service account)."""

    api: client.ApiClient
    namespace: str
    host: str

    @classmethod
    def connect(
        cls,
        namespace: str | None = None,
        context: str | None = None,
        *,
        alternative: str | None = LOCAL_ALTERNATIVE,
    ) -> Cluster:
        """Connect with the current kubeconfig (or the in-cluster account). Without one the
        ClusterError names how to configure one and, unless None, the caller's
        `alternative` to a cluster (a WorkerPool has none)."""
        current_ns = "default"
        try:
            config.load_incluster_config()
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as fh:
                current_ns = fh.read().strip() or current_ns
        except (config.ConfigException, OSError):
            try:
                config.load_kube_config(context=context)
                _, active = config.list_kube_config_contexts()
                current_ns = (active or {}).get("context", {}).get("namespace") or current_ns
            except (config.ConfigException, OSError, TypeError) as exc:
                otherwise = f", or {alternative}" if alternative else ""
                raise ClusterError(
                    f"no Kubernetes configuration found ({exc}): set KUBECONFIG or "
                    f"~/.kube/config{otherwise}"
                ) from None
        api = client.ApiClient()
        return cls(api=api, namespace=namespace or current_ns, host=str(api.configuration.host))

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One API call; unreachable servers and a missing CRD become clear ClusterErrors."""
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and _missing_resource(exc):
                raise ClusterError(
                    f"the MapTask resource is not installed in the cluster at {self.host}: {INSTALL_HINT}"
                ) from None
            raise
        except (HTTPError, OSError) as exc:
            raise ClusterError(
                f"cannot reach the Kubernetes API at {self.host} to {what} ({type(exc).__name__}): "
                "check KUBECONFIG and that the cluster is running"
            ) from None

    # --- MapTask operations -----------------------------------------------------------
    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            body = self.call(
                "read MapTask " + name,
                self.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ClusterError(
                f"reading MapTask {name} in {self.namespace} failed: {message_of(exc)}"
            ) from None
        return dict(body)

    def list(self) -> list[dict[str, Any]]:
        try:
            body = self.call(
                "list MapTasks",
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
            )
        except ApiException as exc:
            raise ClusterError(
                f"listing MapTasks in {self.namespace} failed: {message_of(exc)}"
            ) from None
        return list(body.get("items") or [])

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        try:
            created = self.call(
                "create MapTask " + name,
                self.custom.create_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                body,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise ConfigError(
                    f"a MapTask named {name!r} already exists in namespace {self.namespace}: pick another "
                    f"name, or delete it with `kubectl delete mt {name} -n {self.namespace}`"
                ) from None
            raise ClusterError(
                f"creating MapTask {name} in {self.namespace} was refused: {message_of(exc)}"
            ) from None
        return dict(created)

    def suspend(self, name: str) -> None:
        try:
            self.call(
                "cancel MapTask " + name,
                self.custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                {"spec": {"suspend": True}},
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise ClusterError(f"cancelling MapTask {name} failed: {message_of(exc)}") from None

    def secret_exists(self, name: str) -> bool | None:
        """Whether Secret `name` exists in the namespace; None when this user may not read
        Secrets (RBAC), so a caller does not block on what it cannot know. Only the Secret's
        metadata is asked for (PartialObjectMetadata): its keys never reach this process."""
        try:
            self.call(
                "check Secret " + name,
                self.api.call_api,
                f"/api/v1/namespaces/{self.namespace}/secrets/{name}",
                "GET",
                header_params={"Accept": METADATA_ONLY},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status in (401, 403):
                return None
            raise ClusterError(
                f"checking Secret {name} in {self.namespace} failed: {message_of(exc)}"
            ) from None
        return True

    def task_pods(self, name: str) -> builtins.list[dict[str, Any]]:
        """The pods of MapTask `name` that still exist, as plain dicts."""
        try:
            pods = self.call(
                "list pods",
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=f"kubemap.io/task={task_label(name)}",
            )
        except ApiException as exc:
            raise ClusterError(
                f"listing the pods of MapTask {name} in {self.namespace} failed: {message_of(exc)}"
            ) from None
        return [self.api.sanitize_for_serialization(p) for p in pods.items]

    def pod_log(self, pod: str, *, tail_lines: int | None = None) -> str:
        """A pod's log; ClusterError (with the API server's reason) when it cannot be read."""
        try:
            # Raw bytes, decoded here: kubernetes-client 36 returns the repr of the bytes
            # ("b'...\\n...'") when it decodes a log itself (kubernetes-client/python#2596).
            response = self.call(
                "read logs",
                self.core.read_namespaced_pod_log,
                pod,
                self.namespace,
                tail_lines=tail_lines,
                _preload_content=False,
            )
        except ApiException as exc:
            raise ClusterError(
                f"cannot read the logs of pod {pod} in {self.namespace}: {message_of(exc)}"
            ) from None
        return bytes(response.data).decode("utf-8", "replace")


def _missing_resource(exc: ApiException) -> bool:
    """404 for the resource type itself (CRD absent), not for one object."""
    text = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or "")
    return "could not find the requested resource" in text or "page not found" in text


message_of = api_error_message


__all__ = ["INSTALL_HINT", "Cluster", "ClusterClient", "message_of"]
