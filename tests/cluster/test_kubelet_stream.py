"""Port-forward and pod logs through the real API server to the emulated node's kubelet
endpoint (kubeletstream): `kubectl port-forward`, the Python client's portforward,
`kubectl logs` (with --tail and -f), RBAC on pods/portforward, and the endpoint's own
client-certificate check.

They need ``KUBECONFIG`` (``eval "$(tests/cluster/testcluster env)"``) and kubectl from
tests/tools/kube-tools; the pods run ``python`` (image python:3.12-slim on a real node), so
the RBAC and port-forward ones also pass on kind. The endpoint's own checks run only on the
test cluster.

    .venv/bin/pytest -m e2e tests/cluster/test_kubelet_stream.py
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from clusterlib.state import ClusterState, state_dir  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"),
        reason='needs KUBECONFIG: eval "$(tests/cluster/testcluster env)"',
    ),
]
IMAGE = "python:3.12-slim"
TIMEOUT = 60.0


def _wait(what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {timeout:.0f}s")
        time.sleep(0.3)


def _state() -> ClusterState | None:
    state = ClusterState.load(state_dir())
    if state is None or os.environ.get("KUBECONFIG") != state.kubeconfig:
        return None
    return state


@pytest.fixture(scope="module")
def kubectl() -> str:
    tools = HERE.parent / "tools" / "kube-tools"
    if not tools.is_file():
        pytest.skip("tests/tools/kube-tools is missing: no kubectl")
    out = subprocess.run([sys.executable, str(tools)], capture_output=True, text=True, check=True)
    return str(Path(out.stdout.strip().splitlines()[-1]) / "kubectl")


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    from kubernetes import config

    with config.new_client_from_config(config_file=os.environ["KUBECONFIG"]) as client:
        yield client


@pytest.fixture
def namespace(api: Any) -> Iterator[str]:
    from kubernetes import client

    name = f"stream-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    _wait("default ServiceAccount", lambda: _has_default_sa(core, name))
    yield name
    core.delete_namespace(name)


def _has_default_sa(core: Any, ns: str) -> bool:
    return any(
        sa.metadata.name == "default" for sa in core.list_namespaced_service_account(ns).items
    )


def _free_port() -> int:
    """Emulated pods share the host's network: a port free here is free for the pod."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_pod(api: Any, ns: str, name: str, command: list[str], restart: str = "Never") -> None:
    from kubernetes import client

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "automountServiceAccountToken": False,
            "containers": [{"name": "main", "image": IMAGE, "command": command}],
        },
    }
    client.CoreV1Api(api).create_namespaced_pod(ns, pod)


def _phase(api: Any, ns: str, name: str) -> str:
    from kubernetes import client

    return str(client.CoreV1Api(api).read_namespaced_pod(name, ns).status.phase)


def _raw_log(api: Any, ns: str, name: str) -> str:
    """The pod's log; _preload_content=False because kubernetes 36's read_namespaced_pod_log
    returns the repr of the bytes ("b'...'"), kubernetes-client/python#2596."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        resp = client.CoreV1Api(api).read_namespaced_pod_log(name, ns, _preload_content=False)
    except ApiException as exc:
        if exc.status == 400:  # "waiting to start": not run by the node yet
            return ""
        raise
    return str(resp.data.decode())


def _web_pod(api: Any, ns: str) -> int:
    """A running pod serving HTTP on 127.0.0.1:<port> (loopback only: no Service reaches it)."""
    port = _free_port()
    _run_pod(
        api,
        ns,
        "web",
        ["python", "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        "Always",
    )
    _wait("web pod running", lambda: _phase(api, ns, "web") == "Running")
    _wait("web pod listening", lambda: "Serving HTTP" in _raw_log(api, ns, "web"))
    return port


def _gets_served(api: Any, ns: str) -> int:
    return _raw_log(api, ns, "web").count('"GET /')


class Forward:
    """`kubectl port-forward pod/web :PORT` in the background; .local is its local port."""

    def __init__(self, kubectl: str, ns: str, port: int, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [kubectl, "port-forward", "-n", ns, "pod/web", f":{port}", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "Forwarding from 127.0.0.1:NNNN -> PORT", or EOF
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        self.local = int(found.group(1)) if found else 0

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return str(resp.read().decode())


def test_kubectl_port_forward_reaches_the_pods_loopback_port(
    api: Any, namespace: str, kubectl: str
) -> None:
    port = _web_pod(api, namespace)
    before = _gets_served(api, namespace)
    forward = Forward(kubectl, namespace, port)
    try:
        assert forward.local, forward.stop()
        for _ in range(3):  # one forwarding session carries several connections
            assert "Directory listing for /" in _get(f"http://127.0.0.1:{forward.local}/")
    finally:
        forward.stop()
    _wait("3 GETs in the pod's log", lambda: _gets_served(api, namespace) == before + 3)


def test_python_client_portforward(api: Any, namespace: str) -> None:
    from kubernetes import client
    from kubernetes.stream import portforward

    port = _web_pod(api, namespace)
    before = _gets_served(api, namespace)
    core = client.CoreV1Api(api)
    forward = portforward(
        core.connect_get_namespaced_pod_portforward, "web", namespace, ports=str(port)
    )
    try:
        sock = forward.socket(port)
        sock.setblocking(True)
        sock.sendall(b"GET /pf HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        sock.close()
        assert reply.startswith(b"HTTP/1.0 404"), reply[:200]  # the pod's own answer
        assert forward.error(port) is None
    finally:
        forward.close()
    _wait("the GET in the pod's log", lambda: _gets_served(api, namespace) == before + 1)
    assert '"GET /pf HTTP/1.1" 404' in _raw_log(api, namespace, "web")


def test_kubectl_logs_prints_the_pods_output(api: Any, namespace: str, kubectl: str) -> None:
    lines = [f"line {i} {uuid.uuid4().hex[:6]}" for i in range(5)]
    script = "import sys\nfor line in sys.argv[1:]: print(line, flush=True)"
    _run_pod(api, namespace, "talker", ["python", "-c", script, *lines])
    _wait("talker done", lambda: _phase(api, namespace, "talker") == "Succeeded")

    def logs(*args: str) -> str:
        out = subprocess.run(
            [kubectl, "logs", "-n", namespace, "pod/talker", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert logs().splitlines() == lines
    assert logs("--tail=2").splitlines() == lines[-2:]
    assert logs("--tail=0") == ""
    assert logs("--limit-bytes=6") == lines[0][:6]


def test_kubectl_logs_follow_ends_when_the_container_exits(
    api: Any, namespace: str, kubectl: str
) -> None:
    # The container writes, waits for a file the test creates, writes again and exits; the
    # follower must see both parts and return on its own.
    gate = HERE / ".cache" / f"gate-{uuid.uuid4().hex[:8]}"
    gate.parent.mkdir(exist_ok=True)
    state = _state()
    if state is None:
        pytest.skip("the gate file is shared with the pod only on the test cluster's emulator")
    script = (
        "import os, sys, time\n"
        "print('before', flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.1)\n"
        "print('after', flush=True)"
    )
    _run_pod(api, namespace, "slow", ["python", "-c", script, str(gate)])
    _wait("slow running", lambda: "before" in _raw_log(api, namespace, "slow"))
    follower = subprocess.Popen(
        [kubectl, "logs", "-f", "-n", namespace, "pod/slow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "before\n"
        gate.touch()
        out, err = follower.communicate(timeout=60)
    finally:
        gate.unlink(missing_ok=True)
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert out == "after\n"


def _reader_without_portforward(api: Any, ns: str) -> str:
    """A ServiceAccount that may get pods (and their logs) but not create pods/portforward."""
    from kubernetes import client

    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="viewer"))
    )
    rbac.create_namespaced_role(
        ns,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="viewer"),
            rules=[
                client.V1PolicyRule(
                    api_groups=[""], resources=["pods", "pods/log"], verbs=["get", "list"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        ns,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="viewer"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="viewer"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="viewer", namespace=ns)],
        ),
    )
    return f"system:serviceaccount:{ns}:viewer"


def _endpoint_log_lines() -> int:
    state = _state()
    if state is None:
        return 0
    return (Path(state_dir()) / "logs" / "kubelet-stream.log").read_text().count("portForward ")


def test_port_forward_needs_rbac_on_pods_portforward(
    api: Any, namespace: str, kubectl: str
) -> None:
    from kubernetes import client

    port = _web_pod(api, namespace)
    user = _reader_without_portforward(api, namespace)
    as_viewer = ("--as", user)
    _wait(
        "viewer may read the logs",
        lambda: (
            subprocess.run(
                [kubectl, "logs", "-n", namespace, "pod/web", *as_viewer], capture_output=True
            ).returncode
            == 0
        ),
        10,
    )
    reached = _endpoint_log_lines()
    forward = Forward(kubectl, namespace, port, *as_viewer)
    if forward.local:  # kubectl listens before it dials: the first connection is refused
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            _get(f"http://127.0.0.1:{forward.local}/")
    err = forward.stop()
    assert "forbidden" in err.lower() and "pods/portforward" in err, err
    assert _endpoint_log_lines() == reached  # the API server refused; the node saw nothing

    # The same user through the Python client (what the SDK uses): 403 from the API server.
    from kubernetes.client.rest import ApiException
    from kubernetes.stream import portforward

    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(
            "viewer", namespace, client.AuthenticationV1TokenRequest(spec={"audiences": []})
        )
        .status.token
    )
    cfg = client.Configuration()
    cfg.host = api.configuration.host
    cfg.ssl_ca_cert = api.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    # kubernetes 36 turns the refused handshake (ApiException, status 0, "Handshake status
    # 403 Forbidden") into AttributeError while decoding its empty body: look at the chain.
    with client.ApiClient(cfg) as as_viewer_api, pytest.raises(Exception) as refused:
        portforward(
            client.CoreV1Api(as_viewer_api).connect_get_namespaced_pod_portforward,
            "web",
            namespace,
            ports=str(port),
        ).close()
    chain = [refused.value, refused.value.__context__]
    assert any(isinstance(e, ApiException) and "403" in str(e) for e in chain), chain
    assert _endpoint_log_lines() == reached

    # Granting pods/portforward (create) lets the same user through.
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.patch_namespaced_role(
        "viewer",
        namespace,
        {
            "rules": [
                {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create"]},
            ]
        },
    )
    _wait(
        "viewer may port-forward",
        lambda: (
            subprocess.run(
                [
                    kubectl,
                    "auth",
                    "can-i",
                    "create",
                    "pods",
                    "--subresource=portforward",
                    "-n",
                    namespace,
                    *as_viewer,
                ],
                capture_output=True,
                text=True,
            ).stdout.strip()
            == "yes"
        ),
        10,
    )
    forward = Forward(kubectl, namespace, port, *as_viewer)
    try:
        assert forward.local, forward.stop()
        assert "Directory listing for /" in _get(f"http://127.0.0.1:{forward.local}/")
    finally:
        forward.stop()


def test_endpoint_requires_a_client_cert_from_the_cluster_ca(api: Any) -> None:
    from kubernetes import client

    state = _state()
    if state is None:
        pytest.skip("the emulated node's kubelet endpoint exists only on the test cluster")
    node = client.CoreV1Api(api).read_node("kubemap-node-0")
    port = node.status.daemon_endpoints.kubelet_endpoint.port
    assert port == state.ports["kubelet"]
    assert {"InternalIP": "127.0.0.1"}.items() <= {
        a.type: a.address for a in node.status.addresses
    }.items()
    pki = Path(state_dir()) / "pki"
    url = f"https://127.0.0.1:{port}/containerLogs/kube-system/none/main"

    def status(cert: str | None) -> int | str:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))  # its cert: from the CA
        if cert:
            ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, ssl.SSLError, ConnectionError) as exc:
            return type(exc).__name__

    assert status(None) == 401
    # Signed by another CA (the aggregation layer's): refused in the TLS handshake.
    assert isinstance(status("front-proxy-client"), str)
    assert status("apiserver-kubelet-client") == 400  # authenticated; no such pod has run
