"""Runtime packages on a warm pool, on the test cluster, installed by real pip from the index.

`tomli_w` is a small pure-Python package that this venv does not have: the pool's workers
(host processes here) must pip-install it, once per worker, for the tasks that need it. The
installs are counted from each worker's log ("installed runtime packages ..."), which the
node emulator keeps in the pod's directory, next to the worker's package cache."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubemap
import pytest
from e2ekit import get_task
from kubemap.api.workerpool import WorkerPool
from kubemap.errors import MapTaskError
from kubemap.resources.workerpool import python_minor
from kubernetes import client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    pytest.mark.usefixtures("kubemap_installed"),
]

NAMESPACE = "default"
PACKAGE = "tomli_w"
INSTALLED = "installed runtime packages"


def opts(**kw: Any) -> dict[str, Any]:
    return {
        "backend": "kubernetes",
        "namespace": NAMESPACE,
        "store": os.environ.get("KUBEMAP_STORE"),
        **kw,
    }


def dump(x: int) -> tuple[str, str, str]:
    """Needs tomli_w, which only the worker's runtime environment has."""
    import os

    import tomli_w  # type: ignore[import-not-found]

    return os.environ.get("HOSTNAME", ""), tomli_w.__file__, tomli_w.dumps({"x": x})


def worker_log(package_file: str) -> Path:
    """The worker's log: the emulator's pod directory holds it and (cwd) the package cache."""
    for parent in Path(package_file).parents:
        found = list(parent.glob("*.log"))
        if found:
            return found[0]
    raise AssertionError(f"no worker log above {package_file}")


def wait_ready(wp: WorkerPool, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while wp.status().ready < n:
        assert time.monotonic() < deadline, f"pool {wp.name}: {n} workers not ready"
        time.sleep(0.5)


@pytest.fixture
def pool(unique: Callable[[str], str]) -> Iterator[WorkerPool]:
    assert importlib.util.find_spec(PACKAGE) is None, f"{PACKAGE} must not be in the venv"
    wp = WorkerPool(
        unique("pkgs"),
        namespace=NAMESPACE,
        replicas=2,
        idle_ttl_seconds=0,
        packages=[PACKAGE],
        # Relative: each worker's own directory (the emulator mounts no emptyDir), as each
        # pod of a real cluster has its own emptyDir at the default path.
        env={"KUBEMAP_PACKAGE_CACHE": "packages"},
    ).create()
    yield wp
    wp.delete()


def test_packages_install_once_per_worker_and_a_bad_one_fails_the_task_at_once(
    pool: WorkerPool, unique: Callable[[str], str]
) -> None:
    wait_ready(pool, 2)
    first = kubemap.map(dump, range(40), **opts(name=unique("pk1"), pool=pool.name))
    # A second task naming the pool's package itself: the same set, the same environment.
    second = kubemap.map(
        dump, range(40), **opts(name=unique("pk2"), pool=pool.name, packages=[PACKAGE])
    )
    for results in (first, second):
        assert [r[2] for r in results] == [f"x = {x}\n" for x in range(40)]
    envs = {(host, Path(f).parent.parent) for host, f, _ in first + second}
    hosts = {host for host, _ in envs}
    assert len(envs) == len(hosts), f"one environment per worker, got {envs}"
    for host, env in envs:
        assert env.parent.name == "packages" and host in str(env)  # the worker's own cache
        log = worker_log(str(env)).read_text()
        assert log.count(INSTALLED) == 1, f"{host} installed {log.count(INSTALLED)} times"
    assert pool.status().python_version == python_minor()  # still advertised

    bad = unique("pkbad")
    with pytest.raises(MapTaskError) as err:
        kubemap.map(
            dump, range(10), **opts(name=bad, pool=pool.name, packages=["pandas==9.9"], retries=3)
        )
    message = str(err.value)
    assert "pip could not install pandas==9.9" in message, message
    assert "No matching distribution found for pandas==9.9" in message, message
    task = get_task(client.CustomObjectsApi(), bad)
    assert task is not None
    reasons = [c.get("reason") for c in task["status"].get("conditions") or []]
    assert "UsageError" in reasons, reasons
    # Permanent, not a retry loop: each worker tried its first lease once (3 retries per
    # slice would be 4 tries of each), then the task was over.
    tries = sum(worker_log(str(env)).read_text().count("cannot run items") for _, env in envs)
    assert 1 <= tries <= len(hosts), f"{tries} failed installs on {len(hosts)} workers"
