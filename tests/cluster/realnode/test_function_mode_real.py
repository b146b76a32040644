"""Function mode in real containers: the SDK pickles a function, uploads it and its inputs to
S3, and the emulator's operator runs its pods on the real node, where the kubemap image's
worker (uid 10001, read-only root) unpickles it and reads its slice from S3 through the
bridge's address (``store_endpoint``: the pods do not reach S3 where the SDK does).

What proves the pods were real containers, not host processes: each call returns its
hostname (a container's is its pod's name) and uid, and every pod of the task was bound to
the real node.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import kubemap
import pytest
from clusterlib.realnode_config import GATEWAY, REAL_NODE_NAME
from kubernetes import client
from realnodekit import IMAGE, NAMESPACE, ON_REAL_NODE

# real_api skips (or fails, with KUBEMAP_REAL_NODE_REQUIRED) when there is no real node.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420), pytest.mark.usefixtures("real_api")]


def real_node_options(**extra: Any) -> dict[str, Any]:
    s3_port = re.sub(r".*:", "", os.environ["AWS_ENDPOINT_URL_S3"])
    return {
        "backend": "kubernetes",
        "namespace": NAMESPACE,
        "store": os.environ["KUBEMAP_STORE"],
        "image": IMAGE,
        "node_selector": ON_REAL_NODE["nodeSelector"],
        "tolerations": ON_REAL_NODE["tolerations"],
        "store_endpoint": f"http://{GATEWAY}:{s3_port}",
        **extra,
    }


def where_am_i(x: int) -> tuple[int, str, int]:
    import os
    import socket

    return x * x, socket.gethostname(), os.getuid()


def test_a_function_runs_in_real_containers_and_its_results_come_back(
    core: client.CoreV1Api, unique: Callable[[str], str]
) -> None:
    name = unique("real-fn")
    run = kubemap.submit(where_am_i, range(12), **real_node_options(name=name, items_per_pod=4))
    try:
        results = run.results(timeout=300)
        assert [r[0] for r in results] == [x * x for x in range(12)]
        assert {r[2] for r in results} == {10001}  # the image's USER
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"kubemap.io/task={name}").items
        hosts = {r[1] for r in results}
        # Three slices of four: each ran in a container whose hostname is its pod's name.
        assert len(hosts) == 3 and all(h.startswith(f"{name}-") for h in hosts), hosts
        assert all(p.spec.node_name == REAL_NODE_NAME for p in pods), [
            (p.metadata.name, p.spec.node_name) for p in pods
        ]
    finally:
        run.delete()


def raises_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad input {x}")
    return x


def test_a_failing_index_in_a_real_container_is_explained(unique: Callable[[str], str]) -> None:
    run = kubemap.submit(
        raises_on_three, range(6), **real_node_options(name=unique("real-fail"), items_per_pod=1)
    )
    with pytest.raises(kubemap.MapTaskError) as caught:
        run.results(timeout=300)
    error = caught.value
    assert set(error.failures) == {3}
    assert "ValueError: bad input 3" in str(error)
