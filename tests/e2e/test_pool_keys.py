"""A warm pool's signing key replaced under running workers: what the user is told, and that
the fix it names works word for word."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import kubemap
import pytest
from e2ekit import NAMESPACE, Operator, PodWatch, kubectl, opts, wait_for
from kubemap.api.workerpool import WorkerPool
from kubemap.resources.workerpool import pool_resource_name
from kubemap.task.signing import pool_secret_name
from kubernetes import client
from test_pools import counted, executions, ready

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed"),
]


def test_a_recreated_pool_key_fails_the_task_naming_the_restart_that_fixes_it(
    core: client.CoreV1Api,
    operator: Operator,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    wp = pool(replicas=1, idle_ttl_seconds=0)
    ready(wp, 1)
    first = tmp_path / "first.log"
    assert kubemap.map(counted(first), range(6), **opts(name=unique("pk"), pool=wp.name)) == [
        3 * x for x in range(6)
    ]
    # The key Secret deleted: the next submit makes a new key the running worker lacks.
    core.delete_namespaced_secret(pool_secret_name(pool_resource_name(wp.name)), NAMESPACE)
    stale = tmp_path / "stale.log"
    with pytest.raises(kubemap.MapTaskError) as info:
        kubemap.map(counted(stale), range(6), **opts(name=unique("pk"), pool=wp.name))
    message = str(info.value)
    assert "tampered" in message or "changed after submission" in message, message
    assert "kubectl rollout restart deployment -l kubemap.io/pool" in message, message
    assert executions(stale) == []  # nothing ran under the old key
    # The command the message names, as the user would type it.
    with PodWatch(core, selector=f"kubemap.io/pool={wp.name}") as pods:
        before = {p.metadata.name for p in core.list_namespaced_pod(
            NAMESPACE, label_selector=f"kubemap.io/pool={wp.name}").items}  # fmt: skip
        subprocess.run(
            [
                kubectl(),
                "rollout",
                "restart",
                "deployment",
                "-l",
                "kubemap.io/pool",
                "-n",
                NAMESPACE,
            ],
            check=True,
            capture_output=True,
        )
        wait_for("a restarted worker", lambda: (pods.live - before) and wp.status().ready == 1)
        wait_for("the old worker gone", lambda: not (pods.live & before))
    fixed = tmp_path / "fixed.log"
    assert kubemap.map(counted(fixed), range(6), **opts(name=unique("pk"), pool=wp.name)) == [
        3 * x for x in range(6)
    ]
    assert executions(fixed) == list(range(6))
