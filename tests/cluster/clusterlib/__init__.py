"""Library behind ``tests/cluster/testcluster``: a real Kubernetes control plane on loopback.

etcd, kube-apiserver and kube-controller-manager (built by ``../build.sh``), a SeaweedFS S3
server and the node emulator, each started in its own process group and stopped by PID.
"""
