"""`helm upgrade` and `helm rollback` of the installed chart while MapTasks and a warm pool run.

Two pod-mode MapTasks and one task on a warm WorkerPool are mid-flight when the release is
upgraded to a new image tag and operator log level (the operator Deployment's pod template
changes, so its pod is replaced; the pool's worker Deployment follows the new worker image,
so its workers are rolled too), then rolled back to the revision before (both replaced
again). The promise is the chaos suite's (chaoskit.check_outcome): each task ends Succeeded
with every result, each index counted once, one result per index in the store, no pod left;
and the pool's leases all settle. The CRDs and the MapTasks must come through untouched (same
uid: an upgrade that deleted or replaced a CRD would take every MapTask with it).

The node emulator runs the pod's command from this checkout and never pulls the image, so any
tag "resolves" here; the tag still changes the pod template, which is what replaces the pods.
The release is put back as installed (a rollback to its revision) even when the test fails.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import kubemap
import pytest
import yaml
from chaoskit import (
    NAMESPACE,
    PodLedger,
    Verdict,
    check_outcome,
    get_task,
    opts,
    report,
    task_pods,
    wait_finished,
    wait_progress,
)
from faults import OPERATOR_NAMESPACE, OPERATOR_SELECTOR, running_operator, wait_until
from kubemap.api.workerpool import WorkerPool
from kubemap.resources.workerpool import pool_resource_name
from kubernetes import client, watch
from test_pool_faults import check_pool_outcome, logged

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import chartkit as ck

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

RELEASE = "kubemap"  # as tests/cluster/clusterlib/helm.py installs it
CRDS = ("maptasks.kubemap.io", "workerpools.kubemap.io")
KEEP = "helm.sh/resource-policy"
POD_TASKS, ITEMS, SECONDS, PARALLELISM, PER_POD = 2, 60, 0.5, 4, 2
POOL_ITEMS, POOL_REPLICAS = 80, 2
FINAL = ("Succeeded", "Failed", "Cancelled")


# --- helm -----------------------------------------------------------------------------------


def helm(*args: str, timeout: float = 180) -> str:
    done = ck.run([ck.helm_bin(), *args, "-n", OPERATOR_NAMESPACE], timeout=timeout)
    assert done.returncode == 0, f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stderr}"
    return done.stdout


def revision() -> int:
    history = yaml.safe_load(helm("history", RELEASE, "--max", "1", "-o", "yaml"))
    return int(history[-1]["revision"])


def deployed_manifest() -> str:
    return helm("get", "manifest", RELEASE)


@pytest.fixture
def release(core: client.CoreV1Api) -> Iterator[int]:
    """The installed revision; afterwards the release is that revision again (a rollback to
    it when anything differs, e.g. the test failed between its upgrade and its rollback), so
    the following chaos tests see the chart as it was installed."""
    before, manifest = revision(), deployed_manifest()
    yield before
    status = yaml.safe_load(helm("status", RELEASE, "-o", "yaml"))["info"]["status"]
    if status != "deployed" or deployed_manifest() != manifest:
        helm("rollback", RELEASE, str(before), "--wait", "--timeout", "150s", timeout=240)
    wait_until("the operator runs", lambda: running_operator(core) is not None, 120)


# --- what the cluster holds -----------------------------------------------------------------


@dataclass
class PodWatch:
    """Every event on the pods of one selector, in the API server's order (a watch resumed
    from its last resourceVersion; a relist when that is gone records the pods that vanished
    meanwhile as deleted). `gone_before` answers "was A gone before B appeared?"."""

    core: client.CoreV1Api
    namespace: str
    selector: str
    events: list[tuple[str, str]] = field(default_factory=list)  # (ADDED|MODIFIED|DELETED, pod)
    images: dict[str, str] = field(default_factory=dict)
    restarts: dict[str, tuple[int, int]] = field(default_factory=dict)  # first, last count
    terminating: dict[str, float] = field(default_factory=dict)  # pod -> when first seen deleted
    gone: dict[str, float] = field(default_factory=dict)  # pod -> when the DELETED event came
    # pod -> index in `events` where its process had ended (phase Succeeded/Failed, every
    # container terminated, or deleted): what the Recreate strategy waits for before it
    # creates the new pod, so the old pod object may still be there when the new one appears
    ended: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._live: set[str] = set()
        self._listed = False

    def __enter__(self) -> PodWatch:
        self._thread.start()
        wait_until("the pod watch lists", lambda: bool(self.events) or self._listed, 30, 0.1)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(40)

    def _note(self, kind: str, pod: Any) -> None:
        name = pod.metadata.name
        self.events.append((kind, name))
        self.images[name] = pod.spec.containers[0].image
        if pod.metadata.deletion_timestamp is not None or kind == "DELETED":
            self.terminating.setdefault(name, time.monotonic())
        if kind == "DELETED":
            self.gone.setdefault(name, time.monotonic())
        statuses = pod.status.container_statuses or []
        finished = pod.status.phase in ("Succeeded", "Failed") or (
            bool(statuses) and all(cs.state and cs.state.terminated for cs in statuses)
        )
        if kind == "DELETED" or finished:
            self.ended.setdefault(name, len(self.events) - 1)
        for cs in pod.status.container_statuses or []:
            first, _ = self.restarts.get(name, (cs.restart_count or 0, 0))
            self.restarts[name] = (first, cs.restart_count or 0)
        (self._live.discard if kind == "DELETED" else self._live.add)(name)

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listed = self.core.list_namespaced_pod(
                        self.namespace, label_selector=self.selector
                    )
                    names = {p.metadata.name for p in listed.items}
                    for gone in sorted(self._live - names):
                        self.events.append(("DELETED", gone))
                        self.ended.setdefault(gone, len(self.events) - 1)
                        self.gone.setdefault(gone, time.monotonic())
                        self._live.discard(gone)
                    for pod in listed.items:
                        if pod.metadata.name not in self._live:
                            self._note("ADDED", pod)
                    version = listed.metadata.resource_version
                    self._listed = True
                for event in watch.Watch().stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=version,
                    timeout_seconds=5,
                    _request_timeout=15,
                ):
                    if event["type"] == "ERROR":  # 410 Gone: list again
                        version = ""
                        break
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    self._note(event["type"], pod)
                    if self._stop.is_set():
                        return
            except Exception:  # the API server is away or the version expired: list again
                version = ""
                time.sleep(0.5)

    def seen(self) -> list[str]:
        return list(dict.fromkeys(name for _, name in self.events))

    def pods_of(self, task: str) -> dict[str, str]:
        """Pod -> image of one task's pods (named <task>-<index>-<attempt>)."""
        return {pod: i for pod, i in list(self.images.items()) if pod.startswith(f"{task}-")}

    def restarted(self) -> int:
        """Container restarts while watched (a process that died and was started again)."""
        return sum(last - first for first, last in self.restarts.values())

    def live(self) -> set[str]:
        return set(self._live)

    def first(self, name: str) -> int:
        return next(i for i, (_, n) in enumerate(self.events) if n == name)

    def stopping_seconds(self, name: str) -> float:
        """From the pod's deletion to its end: how long its process took to stop."""
        return self.gone.get(name, float("nan")) - self.terminating.get(name, float("nan"))

    def gone_before(self, old: str, new: str) -> bool:
        """Had `old`'s process ended before `new` appeared? (Its pod object may outlive it.)"""
        return old in self.ended and self.ended[old] < self.first(new)


@dataclass(frozen=True)
class OperatorPod:
    name: str
    image: str
    level: str  # KUBEMAP_LOG_LEVEL
    worker_image: str  # KUBEMAP_WORKER_IMAGE: what the pools' workers and task pods run


def running_operator_pod(core: client.CoreV1Api) -> OperatorPod | None:
    pod = running_operator(core)
    if pod is None:
        return None
    container = pod.spec.containers[0]
    env = {e.name: e.value or "" for e in container.env or []}
    return OperatorPod(
        pod.metadata.name,
        container.image,
        env.get("KUBEMAP_LOG_LEVEL", ""),
        env.get("KUBEMAP_WORKER_IMAGE", ""),
    )


def wait_operator(core: client.CoreV1Api, image: str, level: str, not_in: set[str]) -> OperatorPod:
    """The operator pod running `image` at `level` that is none of `not_in`: the pod the
    helm change made (a pod restarted meanwhile by anyone else has the same template)."""
    found: list[OperatorPod] = []

    def replaced() -> bool:
        now = running_operator_pod(core)
        if now is not None and now.name not in not_in and (now.image, now.level) == (image, level):
            found.append(now)
            return True
        return False

    wait_until(f"an operator pod with {image} at {level}", replaced, 150)
    return found[-1]


def crd_uids(ext: client.ApiextensionsV1Api) -> dict[str, str]:
    uids = {}
    for name in CRDS:
        crd = ext.read_custom_resource_definition(name)
        policy = (crd.metadata.annotations or {}).get(KEEP)
        assert policy == "keep", f"CRD {name} lost its {KEEP}: keep annotation ({policy!r})"
        assert crd.metadata.deletion_timestamp is None, f"CRD {name} is being deleted"
        uids[name] = crd.metadata.uid
    return uids


def dispatcher_key(core: client.CoreV1Api) -> dict[str, str]:
    found = core.list_namespaced_secret(
        OPERATOR_NAMESPACE, label_selector="app.kubernetes.io/component=dispatcher"
    ).items
    assert len(found) == 1, [s.metadata.name for s in found]
    return dict(found[0].data)


def pool_image(apps: client.AppsV1Api, pool: str) -> str:
    found = apps.read_namespaced_deployment(pool_resource_name(pool), NAMESPACE)
    return str(found.spec.template.spec.containers[0].image)


def image_with_tag(tag: str) -> str:
    """The operator image the release renders with image.tag=TAG (the installed values)."""
    image = yaml.safe_load(helm("get", "values", RELEASE, "--all", "-o", "yaml"))["image"]
    assert not image.get("digest"), f"image.digest is set ({image['digest']}): a tag is ignored"
    return f"{image['repository']}:{tag}"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def task_namespace(core: client.CoreV1Api) -> str:
    """NAMESPACE with the kubemap-s3 Secret. KUBEMAP_E2E_NAMESPACE may name a namespace of
    this test's own: it is made, with a copy of the release namespace's Secret, and kept."""
    try:
        core.read_namespace(NAMESPACE)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    try:
        core.read_namespaced_secret("kubemap-s3", NAMESPACE)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        data = core.read_namespaced_secret("kubemap-s3", OPERATOR_NAMESPACE).data
        body = {"metadata": {"name": "kubemap-s3"}, "type": "Opaque", "data": data}
        core.create_namespaced_secret(NAMESPACE, body)
    return NAMESPACE


@pytest.fixture
def warm_pool(task_namespace: str, unique: Callable[[str], str]) -> Iterator[WorkerPool]:
    wp = WorkerPool(
        unique("upgradepool"), namespace=task_namespace, replicas=POOL_REPLICAS, idle_ttl_seconds=0
    )
    wp.create()
    try:
        wait_until(
            f"{POOL_REPLICAS} pool workers ready",
            lambda: wp.status().ready == POOL_REPLICAS,
            120,
        )
        yield wp
    finally:
        wp.delete()


# --- the tasks ------------------------------------------------------------------------------


def seven(x: int) -> int:
    time.sleep(SECONDS)
    return 7 * x + 1


@dataclass
class Tasks:
    """The pod-mode tasks and the pool task of one scenario, started together."""

    custom: client.CustomObjectsApi
    names: list[str]
    pool_name: str
    pool_log: Path
    ledgers: list[PodLedger]
    runs: list[kubemap.MapRun]
    pool_run: kubemap.MapRun
    finished: set[str] = field(default_factory=set)

    @property
    def every(self) -> list[str]:
        return [*self.names, self.pool_name]

    def unfinished(self) -> list[str]:
        """The tasks still running."""
        for name in self.every:
            if (get_task(self.custom, name).get("status") or {}).get("phase") in FINAL:
                self.finished.add(name)
        return [n for n in self.every if n not in self.finished]

    def durations(self) -> str:
        """Each task's startTime to completionTime, as its status says."""
        took = []
        for name in self.every:
            status = get_task(self.custom, name).get("status") or {}
            start, end = status.get("startTime"), status.get("completionTime")
            took.append(f"{(stamp(end) - stamp(start)):.0f} s" if start and end else "?")
        return ", ".join(took)


def stamp(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def start_tasks(
    stack: contextlib.ExitStack,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    pool: WorkerPool,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> Tasks:
    names = [unique("upgrade") for _ in range(POD_TASKS)]
    ledgers = [stack.enter_context(PodLedger(core, name)) for name in names]
    runs = [
        kubemap.submit(
            seven, range(ITEMS), **opts(name=name, parallelism=PARALLELISM, items_per_pod=PER_POD)
        )
        for name in names
    ]
    pool_name, pool_log = unique("upgrade-pool"), tmp_path / "pool-calls.log"
    pool_run = kubemap.submit(
        logged(pool_log, SECONDS, lambda x: 7 * x + 1),
        range(POOL_ITEMS),
        **opts(name=pool_name, pool=pool.name),
    )
    return Tasks(custom, names, pool_name, pool_log, ledgers, runs, pool_run)


def finish_and_check(
    core: client.CoreV1Api, tasks: Tasks, pool: WorkerPool, pool_pods: PodWatch
) -> tuple[list[Verdict], str]:
    """Every task ends Succeeded with every result counted once and no pod left; the pool's
    leases settle. Returns the pod tasks' verdicts and the pool task's report line."""
    for name in tasks.every:
        wait_finished(tasks.custom, name, 150)
    tasks.unfinished()
    verdicts = [
        check_outcome(core, tasks.custom, name, ITEMS, ledger)
        for name, ledger in zip(tasks.names, tasks.ledgers, strict=True)
    ]
    pool_line = check_pool_outcome(
        core,
        tasks.custom,
        tasks.pool_name,
        POOL_ITEMS,
        tasks.pool_log,
        objects_may_overlap=True,
    )
    for run in tasks.runs:
        assert run.results() == [7 * x + 1 for x in range(ITEMS)]
    assert tasks.pool_run.results() == [7 * x + 1 for x in range(POOL_ITEMS)]
    for verdict in verdicts:  # no failed pod kept either: nothing failed
        assert not task_pods(core, verdict.name), f"pods of {verdict.name} left: {verdict.line()}"
    # The pool's leases settle: no worker busy, its replicas ready and idle, and no worker of
    # an image it was rolled away from left behind.
    wait_until(
        "the pool's leases settle",
        lambda: (s := pool.status()).busy == 0 and s.idle == s.ready == POOL_REPLICAS,
        90,
    )
    wait_until(
        f"only the pool's {POOL_REPLICAS} current workers are left",
        lambda: len(pool_pods.live()) == POOL_REPLICAS,
        90,
    )
    return verdicts, pool_line


def pods_line(verdicts: list[Verdict], pool_line: str) -> str:
    pods = ", ".join(f"{v.name} {v.pods} pods {v.results} result objects" for v in verdicts)
    return f"{pods}; {pool_line}"


BASELINE: dict[str, str] = {}  # the control's durations, quoted by the upgrade test's report


# --- the scenarios --------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_control_the_same_tasks_without_an_upgrade(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    warm_pool: WorkerPool,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """The baseline: the same tasks on the same pool with the release left alone."""
    with contextlib.ExitStack() as stack:
        workers = stack.enter_context(
            PodWatch(core, NAMESPACE, f"kubemap.io/pool={warm_pool.name}")
        )
        tasks = start_tasks(stack, core, custom, warm_pool, unique, tmp_path)
        verdicts, pool_line = finish_and_check(core, tasks, warm_pool, workers)
    BASELINE["durations"] = tasks.durations()
    report(
        f"upgrade control, no helm change: {pods_line(verdicts, pool_line)}; "
        f"task durations {tasks.durations()}"
    )


@pytest.mark.timeout(300)
def test_helm_upgrade_and_rollback_mid_task_lose_and_double_nothing(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    release: int,
    warm_pool: WorkerPool,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    apps, ext = client.AppsV1Api(core.api_client), client.ApiextensionsV1Api(core.api_client)
    first = running_operator_pod(core)
    assert first is not None, "no running operator"
    tag = f"{yaml.safe_load((ck.CHART / 'Chart.yaml').read_text())['appVersion']}-upgraded"
    new_image = image_with_tag(tag)
    assert new_image != first.image, f"the installed operator already runs {new_image}"
    new_level = "DEBUG" if first.level != "DEBUG" else "INFO"
    assert pool_image(apps, warm_pool.name) == first.worker_image
    crds_before, key_before = crd_uids(ext), dispatcher_key(core)

    with contextlib.ExitStack() as stack:
        operators = stack.enter_context(PodWatch(core, OPERATOR_NAMESPACE, OPERATOR_SELECTOR))
        workers = stack.enter_context(
            PodWatch(core, NAMESPACE, f"kubemap.io/pool={warm_pool.name}")
        )
        task_pods_seen = stack.enter_context(PodWatch(core, NAMESPACE, "kubemap.io/task"))
        tasks = start_tasks(stack, core, custom, warm_pool, unique, tmp_path)
        uids = {name: get_task(custom, name)["metadata"]["uid"] for name in tasks.every}
        for name in tasks.every:
            wait_progress(custom, name, 2)
        assert tasks.unfinished() == tasks.every, "tasks finished before the upgrade"

        t0 = time.monotonic()
        helm(
            "upgrade", RELEASE, str(ck.CHART), "--reuse-values",
            "--set", f"image.tag={tag}", "--set", f"operator.logLevel={new_level}",
            "--wait", "--timeout", "150s", timeout=240,
        )  # fmt: skip
        upgraded = wait_operator(core, new_image, new_level, {first.name})
        upgrade_s = time.monotonic() - t0
        assert revision() == release + 1
        # Recreate: the old operator was gone before the new one was created (kopf peering is
        # off: two at once would both create pods for the same indices).
        assert operators.gone_before(first.name, upgraded.name), operators.events
        assert upgraded.worker_image != first.worker_image, "the worker image did not change"
        wait_until(
            "the pool's workers follow the new worker image",
            lambda: pool_image(apps, warm_pool.name) == upgraded.worker_image,
            60,
        )
        # The new operator carries on the tasks the old one left: it makes their next pods
        # (on the new worker image) and the pool task's leases move on under its dispatcher.
        pool_done = (get_task(custom, tasks.pool_name).get("status") or {}).get("succeeded", 0)

        def carried_on() -> bool:
            running = tasks.unfinished()
            made = {
                n
                for n in tasks.names
                if upgraded.worker_image in task_pods_seen.pods_of(n).values()
            }
            pool = (get_task(custom, tasks.pool_name).get("status") or {}).get("succeeded", 0)
            pool_moved = tasks.pool_name not in running or pool >= pool_done + 2
            return pool_moved and all(n in made for n in running if n in tasks.names)

        wait_until("the upgraded operator carries every task on", carried_on, 90)

        mid_rollback = tasks.unfinished()
        assert mid_rollback, "every task finished before the rollback: make them longer"
        t0 = time.monotonic()
        helm("rollback", RELEASE, str(release), "--wait", "--timeout", "150s", timeout=240)
        rolled = wait_operator(core, first.image, first.level, {first.name, upgraded.name})
        rollback_s = time.monotonic() - t0
        assert operators.gone_before(upgraded.name, rolled.name), operators.events
        assert rolled.worker_image == first.worker_image
        wait_until(
            "the pool's workers follow the worker image back",
            lambda: pool_image(apps, warm_pool.name) == first.worker_image,
            60,
        )
        verdicts, pool_line = finish_and_check(core, tasks, warm_pool, workers)

    # The CRDs and every MapTask came through the upgrade and the rollback as they were.
    assert crd_uids(ext) == crds_before
    # The key every pool token derives from survives both (the chart looks it up rather than
    # generating a new one): a pool whose workers were not rolled keeps its credentials.
    assert dispatcher_key(core) == key_before
    assert {n: get_task(custom, n)["metadata"]["uid"] for n in uids} == uids
    # Pods the new operator made run the new worker image: the upgrade reached the tasks.
    images = [i for n in tasks.names for i in task_pods_seen.pods_of(n).values()]
    new_pods = images.count(upgraded.worker_image)
    assert new_pods > 0, images
    baseline = BASELINE.get("durations", "not run")
    report(
        f"helm upgrade (image tag {tag}, log level {new_level}) and rollback mid-task, "
        f"{len(uids)} tasks Succeeded, each index counted once: {pods_line(verdicts, pool_line)} "
        f"({new_pods} of {len(images)} task pods on the upgraded image); operator pods "
        f"{len(operators.seen())}, replaced by helm twice (a new one running "
        f"{upgrade_s:.0f} s after the upgrade began, the old one stopping in "
        f"{operators.stopping_seconds(first.name):.0f} s; {rollback_s:.0f} s and "
        f"{operators.stopping_seconds(upgraded.name):.0f} s for the rollback; "
        f"{operators.restarted()} container restarts besides), "
        f"{len(workers.seen())} pool worker pods seen for {POOL_REPLICAS} replicas; "
        f"{len(mid_rollback)} of {len(uids)} tasks still running at the rollback; task "
        f"durations {tasks.durations()} (control without upgrade: {baseline})"
    )
