"""The scheduler's part for the real node: bind pending pods that select it.

The test cluster has no kube-scheduler: the node emulator binds the pods whose nodeSelector
its node matches. A pod with ``nodeSelector: {kubemap.io/real-node: "true"}`` (and the
toleration for the node's taint) matches only the real node, so this process binds it there
(pods/binding, as kube-scheduler does) and kubelet runs it in a container. Resources are not
checked: kubelet's own admission rejects a pod that does not fit (OutOfcpu, OutOfmemory).

    python -m clusterlib.realnode_binder --kubeconfig ADMIN --node-name kubemap-real-0
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from clusterlib.realnode_config import REAL_NODE_LABEL

log = logging.getLogger("realnode-binder")


def selects_real_node(pod: Any) -> bool:
    spec, meta = pod.spec, pod.metadata
    tolerated = any(
        t.key == REAL_NODE_LABEL and t.operator in ("Exists", "Equal")
        for t in spec.tolerations or []
    )
    return (
        not spec.node_name
        and not spec.scheduling_gates
        and meta.deletion_timestamp is None
        and (spec.scheduler_name or "default-scheduler") == "default-scheduler"
        and (spec.node_selector or {}).get(REAL_NODE_LABEL) == "true"
        and tolerated
        and (pod.status.phase or "Pending") == "Pending"
    )


def bind(core: client.CoreV1Api, pod: Any, node: str) -> None:
    body = client.V1Binding(
        metadata=client.V1ObjectMeta(name=pod.metadata.name, uid=pod.metadata.uid),
        target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
    )
    try:
        # _preload_content=False: the client cannot deserialize the Status this returns.
        core.create_namespaced_binding(pod.metadata.namespace, body, _preload_content=False)
        log.info("bound %s/%s to %s", pod.metadata.namespace, pod.metadata.name, node)
    except ApiException as exc:
        if exc.status not in (404, 409):  # gone, or bound already
            raise


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    config.load_kube_config(args.kubeconfig)
    core = client.CoreV1Api()
    while True:  # re-list after every watch that ends (timeouts, 410 Gone)
        pods = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=")
        for pod in pods.items:
            if selects_real_node(pod):
                bind(core, pod, args.node_name)
        stream = watch.Watch().stream(
            core.list_pod_for_all_namespaces,
            field_selector="spec.nodeName=",
            resource_version=pods.metadata.resource_version,
            timeout_seconds=300,
        )
        try:
            for event in stream:
                if event["type"] in ("ADDED", "MODIFIED") and selects_real_node(event["object"]):
                    bind(core, event["object"], args.node_name)
        except ApiException as exc:
            if exc.status != 410:
                raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
