"""kubemap's node emulator: the scheduler's and the kubelet's parts of one Kubernetes node.

See tests/cluster/node_emulator.py for what it does and, above all, what it does not.
"""
