"""A real node beside the emulator: containerd + kubelet + kube-proxy, running real containers.

Started by ``testcluster up --real-node`` (or KUBEMAP_TESTCLUSTER_REAL_NODE=1) after the
emulator. The node ``kubemap-real-0`` carries the label and NoSchedule taint
``kubemap.io/real-node=true``: a pod runs in a container only when it selects and tolerates
that, so both kinds of node coexist. kubemap's image (``scripts/image``) and a pause image
built from catatonit are imported into containerd, so ``imagePullPolicy: IfNotPresent``
needs no registry.

Pods reach the host's loopback-only API server and S3 through the bridge's address
(GATEWAY): a DNAT rule per port, and route_localnet on the bridge alone. Every change to the
host is recorded first (hoststate) and undone by ``stop``, also after a failed ``up``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import hoststate, kube, procs
from . import realnode_config as cfg
from .pki import KeyPair, Pki, _signed, serving_cert
from .state import CLUSTER_DIR, ClusterState

ENV = "KUBEMAP_TESTCLUSTER_REAL_NODE"
NODE_PROCS = ("realnode-binder", "kubelet", "kube-proxy", "containerd")  # stop order
KUBEMAP_IMAGE = os.environ.get("IMAGE", "kubemap:dev")
APT_PACKAGES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "ip": "iproute2",
    "buildah": "buildah",
    "podman": "podman",
    "catatonit": "catatonit",  # the pause image's only binary (see _images)
}


def wanted() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def say(message: str) -> None:
    print(f"testcluster: real node: {message}", flush=True, file=sys.stderr)


class RealNodeError(RuntimeError):
    """The real node cannot start here; the message says what is missing."""


def _sh(
    *cmd: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(list(cmd), capture_output=True, text=True, input=input)
    if check and run.returncode != 0:
        raise RealNodeError(f"`{' '.join(cmd)}` failed ({run.returncode}): {run.stderr.strip()}")
    return run


def ensure_host_tools() -> None:
    """containerd, the CNI plugins, iptables: installed with apt-get when missing (root)."""
    missing = sorted({pkg for tool, pkg in APT_PACKAGES.items() if shutil.which(tool) is None})
    if not (cfg.CNI_BIN / "bridge").is_file():
        missing.append("containernetworking-plugins")
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RealNodeError(
            f"needs root and {', '.join(missing)} (apt-get install {' '.join(missing)})"
        )
    say(f"installing {' '.join(missing)} with apt-get...")
    _sh("apt-get", "update", "-qq")
    _sh(
        "apt-get",
        "install",
        "-y",
        "-qq",
        "-o",
        "DPkg::Lock::Timeout=300",
        "--no-install-recommends",
        *missing,
    )


def build_node_binaries() -> Path:
    run = subprocess.run(
        ["bash", str(CLUSTER_DIR / "realnode" / "build.sh")], stdout=subprocess.PIPE, text=True
    )
    if run.returncode != 0:
        raise RealNodeError(
            "building kubelet and kube-proxy failed (see realnode/build.sh output above)"
        )
    return Path(run.stdout.strip().splitlines()[-1])


def _client_kubeconfig(d: Path, pki: Pki, server: str, name: str, subject: str) -> Path:
    from .kube import write_kubeconfig

    pair: KeyPair = _signed(
        d,
        name,
        subject,
        ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
         "extendedKeyUsage=clientAuth"],
        pki.ca,
    )  # fmt: skip
    path = d / f"{name}.kubeconfig"
    write_kubeconfig(path, server, pki, subject.rsplit("CN=", 1)[1], pair)
    return path


def _host_network(ports: dict[str, int]) -> None:
    """The bridge, made before CNI does (so that route_localnet is set on it alone, and the
    node has a non-loopback address for kubelet), and DNAT rules to the loopback servers:
    pods reach the API server and S3 at GATEWAY:port and the API server at the `kubernetes`
    Service's IP (whose endpoint, 127.0.0.1, the API server does not publish); the host
    reaches kubelet at GATEWAY:port (the node's address) though it listens on 127.0.0.1."""
    if not Path(f"/sys/class/net/{cfg.BRIDGE}").exists():
        _sh("ip", "link", "add", cfg.BRIDGE, "type", "bridge")
        _sh("ip", "addr", "add", f"{cfg.GATEWAY}/24", "dev", cfg.BRIDGE)
        _sh("ip", "link", "set", cfg.BRIDGE, "up")
    Path(f"/proc/sys/net/ipv4/conf/{cfg.BRIDGE}/route_localnet").write_text("1")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")

    def dnat(chain: str, dest: str, port: int, to_port: int, *match: str) -> None:
        _sh(
            "iptables", "-t", "nat", "-I", chain, *match, "-d", dest, "-p", "tcp",
            "--dport", str(port), "-j", "DNAT", "--to-destination", f"127.0.0.1:{to_port}",
        )  # fmt: skip

    from_pods = ("-i", cfg.BRIDGE)
    for port in (ports["apiserver"], ports["s3"]):
        dnat("PREROUTING", cfg.GATEWAY, port, port, *from_pods)
        dnat("OUTPUT", cfg.GATEWAY, port, port)  # the host's own processes (emulator pods)
    dnat("PREROUTING", cfg.KUBERNETES_SERVICE_IP, 443, ports["apiserver"], *from_pods)
    dnat("OUTPUT", cfg.GATEWAY, ports["realnode_kubelet"], ports["realnode_kubelet"])


def _images(paths: cfg.NodePaths) -> None:
    """Import the pause image (built once from catatonit) and kubemap's image into containerd."""
    env = _containers_env()
    have = subprocess.run(["podman", "image", "exists", cfg.PAUSE_IMAGE], env=env).returncode == 0
    if not have:
        say(f"building {cfg.PAUSE_IMAGE} from /usr/bin/catatonit...")
        if not Path("/usr/bin/catatonit").is_file():
            raise RealNodeError(
                "no /usr/bin/catatonit for the pause image: apt-get install catatonit"
            )
        ctr = _sh("buildah", "from", "scratch").stdout.strip()
        try:
            _sh("buildah", "copy", ctr, "/usr/bin/catatonit", "/pause")
            _sh(
                "buildah",
                "config",
                "--entrypoint",
                '["/pause", "-P"]',
                "--user",
                "65535:65535",
                ctr,
            )
            _sh("buildah", "commit", "--quiet", ctr, cfg.PAUSE_IMAGE)
        finally:
            _sh("buildah", "rm", ctr, check=False)
    wanted = [cfg.PAUSE_IMAGE]
    if subprocess.run(["podman", "image", "exists", KUBEMAP_IMAGE], env=env).returncode == 0:
        wanted.append(KUBEMAP_IMAGE)
    else:
        say(f"warning: no image {KUBEMAP_IMAGE} in podman (build it: scripts/image); not imported")
    for image in wanted:
        name = image if "/" in image.split(":")[0] else f"docker.io/library/{image}"
        with tempfile.TemporaryDirectory(dir=paths.root) as tmp:
            archive = Path(tmp) / "image.tar"
            _sh(
                "podman", "save", "--quiet", "--format", "docker-archive", "-o", str(archive), image
            )
            out = _ctr(paths, "images", "import", "--no-unpack=false", str(archive)).stdout
            imported = [w for w in out.split() if ":" in w and "/" in w]
            source = imported[0] if imported else image
            if source != name:
                _ctr(paths, "images", "tag", "--force", source, name)
        say(f"imported {name} into containerd")


def _containers_env() -> dict[str, str]:
    env = dict(os.environ)
    conf = Path(os.environ.get("KUBEMAP_IMAGE_CACHE") or Path.home() / ".cache/kubemap-image")
    if (conf / "containers.conf").is_file():
        env.setdefault("CONTAINERS_CONF", str(conf / "containers.conf"))
    return env


def _ctr(paths: cfg.NodePaths, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _sh(
        "ctr", "--address", str(paths.containerd_sock), "--namespace", "k8s.io", *args, check=check
    )


def binder_cmd(admin: Path) -> list[str]:
    boot = (
        f"import sys; sys.path.insert(0, {str(CLUSTER_DIR)!r}); "
        "from clusterlib.realnode_binder import main; sys.exit(main(sys.argv[1:]))"
    )
    return [
        sys.executable,
        "-c",
        boot,
        f"--kubeconfig={admin}",
        f"--node-name={cfg.REAL_NODE_NAME}",
    ]


def paths_for(d: Path) -> cfg.NodePaths:
    return cfg.NodePaths.for_state(d)


Start = Callable[[str, list[str], Callable[[], bool], float], Any]


def start(start_proc: Start, state: ClusterState, pki: Pki, d: Path) -> None:
    """Record the host, then start containerd, import the images, start kubelet and
    kube-proxy, and wait for the node to be Ready. Raises RealNodeError or UpError."""
    ensure_host_tools()
    bin_dir = build_node_binaries()
    paths = paths_for(d)
    for sub in ("", "run", "cni", "kubelet", "pod-logs", "containerd", "kubelet-pki", "pki"):
        (paths.root / sub).mkdir(parents=True, exist_ok=True)
    hoststate.snapshot().save(paths.host_before)  # before the first change to the host
    ports = dict(
        zip(
            ("kubelet", "kubelet_healthz", "proxy_healthz", "proxy_metrics"),
            procs.free_ports(4),
            strict=True,
        )
    )
    state.ports.update({f"realnode_{k}": v for k, v in ports.items()})
    state.save(d)
    _host_network(state.ports)
    paths.containerd_config.write_text(cfg.containerd_toml(paths))
    (paths.cni_conf_dir / "10-kubemap.conflist").write_text(cfg.cni_conflist(paths))
    start_proc(
        "containerd",
        cfg.containerd_cmd(paths),
        lambda: _ctr(paths, "version").returncode == 0,
        60,
    )
    _images(paths)
    node_kc = _client_kubeconfig(
        paths.root / "pki", pki, state.apiserver_url, "kubelet",
        f"/O=system:nodes/CN=system:node:{cfg.REAL_NODE_NAME}",
    )  # fmt: skip
    proxy_kc = _client_kubeconfig(
        paths.root / "pki", pki, state.apiserver_url, "kube-proxy", "/CN=system:kube-proxy"
    )
    # The API server verifies kubelets' serving certs against the cluster CA
    # (--kubelet-certificate-authority); it reaches this one at GATEWAY.
    serving = serving_cert(
        paths.root / "pki", "kubelet-serving", cfg.REAL_NODE_NAME,
        (f"IP:{cfg.GATEWAY}", "IP:127.0.0.1", f"DNS:{cfg.REAL_NODE_NAME}"), pki.ca,
    )  # fmt: skip
    paths.kubelet_config.write_text(
        cfg.kubelet_yaml(paths, pki.ca.cert, ports["kubelet"], ports["kubelet_healthz"], serving)
    )
    paths.kube_proxy_config.write_text(
        cfg.kube_proxy_yaml(paths, proxy_kc, ports["proxy_healthz"], ports["proxy_metrics"])
    )
    admin = Path(state.kubeconfig)
    start_proc(
        "kubelet",
        cfg.kubelet_cmd(bin_dir, paths, node_kc),
        lambda: kube.node_ready(admin, cfg.REAL_NODE_NAME),
        120,
    )
    start_proc("realnode-binder", binder_cmd(admin), lambda: True, 10)
    start_proc(
        "kube-proxy",
        cfg.kube_proxy_cmd(bin_dir, paths),
        lambda: kube.http_ok(f"http://127.0.0.1:{ports['proxy_healthz']}/healthz"),
        60,
    )


def stop(state: ClusterState, d: Path) -> tuple[dict[str, set[int]], list[str]]:
    """Stop kubelet, remove every container, stop kube-proxy and containerd, then undo the
    host changes. Returns (PIDs that survived by component, host differences left)."""
    paths = paths_for(d)
    survivors: dict[str, set[int]] = {}
    mine = {p.name: p for p in state.procs if p.name in NODE_PROCS}
    for name in ("realnode-binder", "kubelet"):
        if name in mine:
            left = procs.stop(mine[name], state.cluster_id)
            if left:
                survivors[name] = left
    if "containerd" in mine and procs.is_alive(
        mine["containerd"].pid, mine["containerd"].start_time
    ):
        _remove_containers(paths)
    for name in ("kube-proxy", "containerd"):
        if name in mine:
            left = procs.stop(mine[name], state.cluster_id)
            if left:
                survivors[name] = left
    before = hoststate.HostState.load(paths.host_before)
    left_on_host = hoststate.restore(before) if before is not None else []
    if not any(line.startswith("mount") for line in left_on_host):  # never rm under a mount
        shutil.rmtree(paths.root, ignore_errors=True)
    return survivors, left_on_host


def _remove_containers(paths: cfg.NodePaths) -> None:
    """Kill and delete every task and container (pods' and their sandboxes')."""
    listing = _ctr(paths, "containers", "list", "--quiet", check=False).stdout.split()
    for cid in listing:
        _ctr(paths, "tasks", "kill", "--all", "--signal", "SIGKILL", cid, check=False)
    for cid in listing:
        for _ in range(50):
            if _ctr(paths, "tasks", "delete", "--force", cid, check=False).returncode == 0:
                break
            if "not found" in _ctr(paths, "tasks", "ps", cid, check=False).stderr:
                break
            time.sleep(0.1)
        _ctr(paths, "containers", "delete", cid, check=False)
