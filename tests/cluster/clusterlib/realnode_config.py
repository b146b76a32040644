"""The real node's configuration files: containerd, the bridge CNI network, kubelet, kube-proxy.

Pure functions of paths and ports, so what each component is told (and why) reads in one
place. The settings are the ones a host like this one (no container daemon, an old cgroup) needs:
cgroup v1/hybrid with the cgroupfs driver, runc, no negative oom_score_adj, swap on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .pki import KeyPair

REAL_NODE_NAME = "kubemap-real-0"
# Pods opt in to the real node: it carries this label and a NoSchedule taint with the same key,
# so the emulator keeps every pod that does not ask for real containers.
REAL_NODE_LABEL = "kubemap.io/real-node"
BRIDGE = "kubemap0"
POD_SUBNET = "10.244.77.0/24"
GATEWAY = "10.244.77.1"  # the bridge's address: pods reach the host's loopback services here
KUBERNETES_SERVICE_IP = "10.0.0.1"  # first address of components.SERVICE_CIDR
PAUSE_IMAGE = "docker.io/library/kubemap-pause:catatonit"
CNI_BIN = Path("/usr/lib/cni")
RUNC = "/usr/sbin/runc"


@dataclass(frozen=True)
class NodePaths:
    root: Path  # /var/tmp/kubemap-node-<hash of the state dir>: see for_state()

    @classmethod
    def for_state(cls, state: Path) -> NodePaths:
        """Unix socket paths are limited to 104 bytes (containerd's, kubelet's pod-resources
        socket) and a state dir under pytest's tmp_path is already longer: the node's files
        go to a short directory of their own, removed by ``down``."""
        digest = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:12]
        return cls(root=Path("/var/tmp") / f"kubemap-node-{digest}")

    @property
    def containerd_sock(self) -> Path:
        return self.root / "run" / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy.yaml"

    @property
    def host_before(self) -> Path:
        return self.root / "host-before.json"


def containerd_toml(paths: NodePaths) -> str:
    c = paths.root / "containerd"
    return f"""version = 2
root = "{c / "root"}"
state = "{c / "state"}"
# Plugins that would write outside the state dir or need kernel features this host lacks.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{paths.containerd_sock}"
[ttrpc]
  address = "{paths.root / "run" / "containerd.ttrpc.sock"}"
[debug]
  address = ""
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Containers may not lower their oom_score_adj below containerd's: this host refuses
  # negative values, which kubelet asks for Guaranteed pods.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{paths.cni_conf_dir}"
"""


def cni_conflist(paths: NodePaths) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "kubemap-real-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": GATEWAY}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(paths.root / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def kubelet_yaml(paths: NodePaths, ca: Path, port: int, healthz_port: int, serving: KeyPair) -> str:
    # Reached only from the API server on 127.0.0.1 (logs, exec): anonymous and AlwaysAllow
    # keep the test cluster free of kubelet client certificates; nothing else can connect.
    # Its serving cert comes from the cluster CA, which the API server checks it against.
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: "{ca}"}}
authorization: {{mode: AlwaysAllow}}
tlsCertFile: "{serving.cert}"
tlsPrivateKeyFile: "{serving.key}"
containerRuntimeEndpoint: unix://{paths.containerd_sock}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
podLogsDir: "{paths.root / "pod-logs"}"
# A test node on a shared disk: never evict, never garbage-collect the imported images.
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 30
enableServer: true
staticPodPath: ""
resolvConf: /etc/resolv.conf
"""


def kube_proxy_yaml(
    paths: NodePaths, kubeconfig: Path, healthz_port: int, metrics_port: int
) -> str:
    # conntrack: 0 leaves the host's conntrack sysctls alone (kube-proxy raises them otherwise).
    return f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {{kubeconfig: "{kubeconfig}"}}
hostnameOverride: {REAL_NODE_NAME}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:{healthz_port}
metricsBindAddress: 127.0.0.1:{metrics_port}
clusterCIDR: {POD_SUBNET}
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
iptables: {{localhostNodePorts: false}}
"""


def kubelet_cmd(bin_dir: Path, paths: NodePaths, kubeconfig: Path) -> list[str]:
    return [
        str(bin_dir / "kubelet"),
        f"--config={paths.kubelet_config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={paths.kubelet_dir}",
        f"--cert-dir={paths.root / 'kubelet-pki'}",
        f"--hostname-override={REAL_NODE_NAME}",
        f"--node-ip={GATEWAY}",  # kubelet refuses a loopback node IP
        f"--node-labels={REAL_NODE_LABEL}=true",
        f"--register-with-taints={REAL_NODE_LABEL}=true:NoSchedule",
        "--v=1",
    ]


def kube_proxy_cmd(bin_dir: Path, paths: NodePaths) -> list[str]:
    return [str(bin_dir / "kube-proxy"), f"--config={paths.kube_proxy_config}", "--v=1"]


def containerd_cmd(paths: NodePaths) -> list[str]:
    return ["containerd", f"--config={paths.containerd_config}"]
