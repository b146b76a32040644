"""The operator's dashboard on the test cluster, in a real headless Chromium: a running
MapTask's progress moves without a reload, its failed index's traceback (read by the operator
from the task's store) opens, its slow pod and item are named, its full timeline loads. And
`kubemap dashboard --no-browser` reaches the same pages through pods/portforward.

The node emulator runs pods as host processes, so the operator's 127.0.0.1 is this host's:
the first test opens the dashboard on the port the operator pod's environment names. The
port-forward test skips, naming why, where the node does not serve port-forward (the
emulator until it streams). Screenshots go to a temporary directory, printed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubemap
import pytest
from e2ekit import NAMESPACE, opts
from kubemap.api.workerpool import WorkerPool
from kubemap.task.timings import read_timings
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
from chromium import Browser, find_chromium

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed"),
]

FAILING, SLOW = 3, 17
OPERATOR = "app.kubernetes.io/component=operator"


def planted(failing: int, slow: int) -> Callable[[int], int]:
    def fn(x: int) -> int:  # a closure: it travels by value to the pods
        if x == failing:
            raise ValueError(f"index {x} is planted to fail")
        time.sleep(3.0 if x == slow else 0.3)
        return x

    return fn


def operator_pod(core: client.CoreV1Api) -> tuple[str, int]:
    pods = core.list_namespaced_pod("kubemap-system", label_selector=OPERATOR)
    running = [p for p in pods.items if p.status.phase == "Running"]
    assert running, "no running operator pod"
    env = {e.name: e.value for e in running[0].spec.containers[0].env or []}
    return running[0].metadata.name, int(env.get("KUBEMAP_DASHBOARD_PORT") or 0)


@pytest.fixture()
def browser() -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium: apt-get install chromium (scripts/docs does)")
    with Browser.start(binary) as started:
        yield started


def test_the_operator_serves_a_running_tasks_page(
    core: client.CoreV1Api,
    unique: Callable[[str], str],
    browser: Browser,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    _, port = operator_pod(core)
    assert port, "the chart turned the dashboard off"
    url = f"http://127.0.0.1:{port}"
    shots = tmp_path_factory.mktemp("dashboard-cluster-screenshots")
    run = kubemap.submit(
        planted(FAILING, SLOW), range(24),
        **opts(name=unique("dash"), items_per_pod=2, parallelism=2, min_success_ratio=0.0),
    )  # fmt: skip
    page = browser.open()
    page.navigate(f"{url}/")
    row = f'tr[data-task="{NAMESPACE}/{run.name}"]'
    assert page.poll(f"document.querySelector('{row}') !== null", timeout=30)
    page.navigate(f"{url}/tasks/{NAMESPACE}/{run.name}")
    first = int(page.evaluate("document.querySelector('#succeeded').textContent").replace(",", ""))
    page.screenshot(shots / "cluster-task-running.png")
    moved = page.poll(
        f"Number(document.querySelector('#succeeded').textContent.replace(/,/g, '')) > {first}",
        timeout=120,
    )
    assert moved, f"progress stayed at {first}"
    assert not [e for e in page.drain() if e.get("method") == "Page.loadEventFired"]

    run.wait(timeout=300)
    failure = f"document.querySelector('details.failure[data-index=\"{FAILING}\"]')"
    assert page.poll(f"{failure} !== null", timeout=60), page.evaluate("document.body.innerText")
    page.evaluate(f"{failure}.querySelector('summary').click()")
    assert page.evaluate(f"{failure}.open") is True
    assert f"ValueError: index {FAILING} is planted to fail" in page.evaluate(
        f"{failure}.querySelector('pre').innerText"
    )
    assert page.evaluate("document.querySelector('#rerun').textContent") == (
        f"kubemap retry {run.name} -n {NAMESPACE}"
    )
    records = read_timings(run.task_store)
    (slow,) = [t for t in records if t.first <= SLOW < t.first + t.count and t.ran]
    named = page.poll(f"document.body.innerText.includes('index {SLOW},')", timeout=60)
    assert named, page.evaluate("document.body.innerText")
    assert page.evaluate("document.querySelector('#slowest-worker b').textContent") == slow.worker
    page.screenshot(shots / "cluster-task-finished.png")
    page.evaluate("document.querySelector('#timeline').click()")
    page.wait_for("Page.loadEventFired")
    assert page.evaluate("document.querySelectorAll('rect.slice').length") == len(records)
    page.screenshot(shots / "cluster-timeline.png")
    print(f"\nscreenshots: {sorted(str(p) for p in shots.iterdir())}")


def test_kubemap_dashboard_port_forwards_to_the_operator(
    core: client.CoreV1Api, unique: Callable[[str], str]
) -> None:
    run = kubemap.submit(planted(-1, -1), range(2), **opts(name=unique("dashpf")))
    run.wait(timeout=300)
    process = subprocess.Popen(
        [sys.executable, "-m", "kubemap", "dashboard", "--no-browser", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if process.poll() is not None or "does not serve port-forward" in line:
            rest = line + process.stdout.read()
            if "does not serve port-forward" in rest:
                pytest.skip(f"the cluster's node does not serve port-forward: {rest.strip()}")
            raise AssertionError(f"kubemap dashboard exited: {rest}")
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, line
        with urllib.request.urlopen(found.group(0), timeout=30) as answer:
            index = answer.read().decode()
        assert f'data-task="{NAMESPACE}/{run.name}"' in index
        task_url = f"{found.group(0)}tasks/{NAMESPACE}/{run.name}"
        with urllib.request.urlopen(task_url, timeout=30) as answer:
            assert "Slowest worker" in answer.read().decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=15)


def test_without_pods_portforward_the_error_names_the_permission(
    core: client.CoreV1Api, api: client.ApiClient, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """Who may see the dashboard is who may create pods/portforward: a user allowed to find
    the operator pod but not to port-forward to it is told which permission is missing (the
    API server decides before it dials any node, so this holds on the emulator too)."""
    rbac = client.RbacAuthorizationV1Api(api)
    name = unique("dash-viewer")
    ns = "kubemap-system"
    core.create_namespaced_service_account(ns, {"metadata": {"name": name}})
    rbac.create_namespaced_role(
        ns,
        {
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
        },
    )
    try:
        token = core.create_namespaced_service_account_token(
            name, ns, {"spec": {"expirationSeconds": 600}}
        ).status.token
        config = api.configuration
        kubeconfig = tmp_path / "viewer.yaml"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: viewer\n"
            f"clusters:\n- name: c\n  cluster:\n    server: {config.host}\n"
            f"    certificate-authority: {config.ssl_ca_cert}\n"
            f"users:\n- name: viewer\n  user:\n    token: {token}\n"
            f"contexts:\n- name: viewer\n  context:\n    cluster: c\n    user: viewer\n"
            f"    namespace: {ns}\n"
        )
        done = subprocess.run(
            [sys.executable, "-m", "kubemap", "dashboard", "--no-browser"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
        assert done.returncode != 0
        assert "you need `create` on `pods/portforward` in namespace kubemap-system" in (
            done.stderr
        ), done.stderr
    finally:
        rbac.delete_namespaced_role_binding(name, ns)
        rbac.delete_namespaced_role(name, ns)
        core.delete_namespaced_service_account(name, ns)


def test_a_pools_page_lists_its_workers_busy_then_idle(
    core: client.CoreV1Api, pool: Callable[..., WorkerPool], unique: Callable[[str], str]
) -> None:
    _, port = operator_pod(core)
    wp = pool(replicas=2, idle_ttl_seconds=0)
    api = f"http://127.0.0.1:{port}/api/pools/{NAMESPACE}/{wp.name}"

    def look() -> dict[str, Any]:
        with urllib.request.urlopen(api, timeout=30) as answer:
            return dict(json.load(answer))

    run = kubemap.submit(planted(-1, -1), range(40), **opts(name=unique("dashpool"), pool=wp.name))
    seen_busy = False
    while not run.status().phase.finished:
        page = look()
        seen_busy = seen_busy or ('data-worker="' in page["html"] and ">busy<" in page["html"])
        time.sleep(0.5)
    assert seen_busy, "no worker was shown busy while the task ran"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as answer:
        assert f'data-pool="{NAMESPACE}/{wp.name}"' in answer.read().decode()
    deadline = time.monotonic() + 60
    while ">busy<" in look()["html"] and time.monotonic() < deadline:
        time.sleep(1)
    page = look()["html"]
    assert ">busy<" not in page and page.count(">idle<") >= 1
