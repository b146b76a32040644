"""The kopf handlers, run by kopf itself against KMock (the kopf author's Kubernetes API mock).

KMock keeps objects in memory and serves list/watch/patch, but has no label selectors,
schema, garbage collector or kubelet: the test plays the kubelet by setting pod phases.
The real API server is exercised by tests/e2e.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import kmock
import kopf
import pytest
from kubemap.contract import LABEL_TASK, POD_FINALIZER, task_label
from kubemap_operator.kubeapi import KubeApi
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.handlers import build_registry
from kubemap_operator.tasks.watchcache import WatchCache
from kubernetes import client

NS = "ns"
VERBS = {"list", "watch", "get", "patch", "create", "delete", "update"}


class Cluster:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    async def task(self, name: str) -> dict[str, Any]:
        return dict(
            await asyncio.to_thread(
                self.custom.get_namespaced_custom_object,
                "kubemap.io",
                "v1alpha1",
                NS,
                "maptasks",
                name,
            )
        )

    async def pods(self) -> list[dict[str, Any]]:
        raw = await asyncio.to_thread(self.core.list_namespaced_pod, NS, _preload_content=False)
        return list(json.loads(raw.data)["items"])

    async def set_phase(self, name: str, phase: str, exit_code: int = 0, message: str = "") -> None:
        terminated = {
            "exitCode": exit_code,
            "finishedAt": "2026-01-01T00:00:00Z",
            "message": message,
        }
        patch = {
            "status": {
                "phase": phase,
                "containerStatuses": [{"name": "worker", "state": {"terminated": terminated}}],
            }
        }
        await asyncio.to_thread(
            self.core.patch_namespaced_pod,
            name,
            NS,
            patch,
            _content_type="application/merge-patch+json",
            _preload_content=False,
        )


async def until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met in {timeout}s: {check.__name__}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running_operator(settings: Settings) -> AsyncIterator[Cluster]:
    async with kmock.KubernetesEmulator() as mock, kmock.Server(mock) as server:
        mock.resources["kubemap.io/v1alpha1/maptasks"] = kmock.ResourceInfo(
            kind="MapTask", namespaced=True, verbs=VERBS, subresources={"status"}
        )
        mock.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=VERBS)
        mock.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs=VERBS)
        # kopf waits for these to be discoverable before it watches anything.
        mock.resources["v1/namespaces"] = kmock.ResourceInfo(
            kind="Namespace", namespaced=False, verbs=VERBS
        )
        mock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
            kind="CustomResourceDefinition", namespaced=False, verbs=VERBS
        )
        url = str(server.url).rstrip("/")
        config = client.Configuration()
        config.host = url
        api = client.ApiClient(config)

        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url)

        registry, _ = build_registry(settings, lambda: KubeApi(api), login=login)
        stop = asyncio.Event()
        operator = asyncio.create_task(
            kopf.operator(registry=registry, standalone=True, clusterwide=True, stop_flag=stop)
        )
        try:
            yield Cluster(api)
        finally:
            stop.set()
            await asyncio.wait_for(operator, timeout=15)


def maptask(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {"mode": "Container", "template": {"image": "busybox"}, **spec},
    }


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_task_runs_to_success_within_parallelism() -> None:
    async with running_operator(Settings(reconcile_interval=1.0, metrics_port=0)) as cluster:
        await asyncio.to_thread(
            cluster.custom.create_namespaced_custom_object,
            "kubemap.io",
            "v1alpha1",
            NS,
            "maptasks",
            maptask("squares", count=5, parallelism=2),
        )
        most_active = 0
        seen: set[str] = set()
        for _ in range(200):
            pods = await cluster.pods()
            active = [
                p
                for p in pods
                if (p.get("status") or {}).get("phase") in (None, "Pending", "Running")
            ]
            most_active = max(most_active, len(active))
            for pod in active:
                meta = pod["metadata"]
                assert (
                    meta["labels"][LABEL_TASK] == "squares" and POD_FINALIZER in meta["finalizers"]
                )
                assert meta["ownerReferences"][0]["uid"] == "uid-squares"
                seen.add(meta["name"])
                await cluster.set_phase(meta["name"], "Succeeded")
            task = await cluster.task("squares")
            if (task.get("status") or {}).get("phase") == "Succeeded":
                break
            await asyncio.sleep(0.1)
        status = (await cluster.task("squares"))["status"]
        assert (
            status["phase"] == "Succeeded"
            and status["succeeded"] == 5
            and status["succeededIndexes"] == "0-4"
        )
        assert seen == {f"squares-{i}-0" for i in range(5)}
        assert most_active <= 2
        assert await until(lambda: _no_pods(cluster))  # succeeded pods are removed promptly


async def _no_pods(cluster: Cluster) -> bool:
    return not await cluster.pods()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_failed_index_is_retried_then_reported() -> None:
    settings = Settings(reconcile_interval=1.0, metrics_port=0, backoff_base_seconds=0.2)
    async with running_operator(settings) as cluster:
        await asyncio.to_thread(
            cluster.custom.create_namespaced_custom_object,
            "kubemap.io",
            "v1alpha1",
            NS,
            "maptasks",
            maptask("flaky", count=1, backoffLimitPerIndex=1),
        )

        async def pod_named(name: str) -> bool:
            return any(p["metadata"]["name"] == name for p in await cluster.pods())

        await until(lambda: pod_named("flaky-0-0"))
        await cluster.set_phase("flaky-0-0", "Failed", exit_code=3)
        await until(lambda: pod_named("flaky-0-1"))  # the retry, after the backoff
        retry = next(p for p in await cluster.pods() if p["metadata"]["name"] == "flaky-0-1")
        assert retry["metadata"]["annotations"]["kubemap.io/failures"] == "1"
        await cluster.set_phase("flaky-0-1", "Failed", exit_code=3)

        async def failed() -> dict[str, Any] | None:
            status = (await cluster.task("flaky")).get("status") or {}
            return status if status.get("phase") == "Failed" else None

        status = await until(failed)
        assert status["failedIndexes"] == "0" and status["failed"] == 1
        assert "after 2 attempt(s)" in status["message"]
        # Failed pods stay for their logs, without the finalizer once recorded.
        await asyncio.sleep(0.5)
        kept = {
            p["metadata"]["name"]: p["metadata"].get("finalizers") for p in await cluster.pods()
        }
        assert kept == {"flaky-0-0": None, "flaky-0-1": None}


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_suspend_cancels_and_deletes_pods() -> None:
    async with running_operator(Settings(reconcile_interval=1.0, metrics_port=0)) as cluster:
        await asyncio.to_thread(
            cluster.custom.create_namespaced_custom_object,
            "kubemap.io",
            "v1alpha1",
            NS,
            "maptasks",
            maptask("long", count=10, parallelism=3),
        )

        async def three() -> bool:
            return len(await cluster.pods()) == 3

        await until(three)
        await asyncio.to_thread(
            cluster.custom.patch_namespaced_custom_object,
            "kubemap.io",
            "v1alpha1",
            NS,
            "maptasks",
            "long",
            {"spec": {"suspend": True}},
            _content_type="application/merge-patch+json",
        )

        async def cancelled() -> bool:
            return ((await cluster.task("long")).get("status") or {}).get("phase") == "Cancelled"

        await until(cancelled)
        await until(lambda: _no_pods(cluster))


# --- The reconciler's I/O order, rate limit and 429 handling, with a recording fake API -------


class FakeApi:
    """Records calls in order; create answers follow a script (e.g. 429 after two pods).

    The watch cache (`cache_of`) shows its task and pods as a watch would; a reconcile that
    read the API instead would be recorded as "get" here."""

    def __init__(
        self, task: dict[str, Any], pods: list[dict[str, Any]], throttle_after: int | None = None
    ) -> None:
        self.task = task
        self.pods = pods
        self.calls: list[str] = []
        self.throttle_after = throttle_after
        self.created: list[str] = []
        self.patches: list[dict[str, Any]] = []

    async def get_task(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get")
        return self.task

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(f"status {status.get('succeededIndexes')}")
        self.patches.append(status)
        meta = self.task["metadata"]
        version = str(int(meta.get("resourceVersion") or 0) + 1)
        self.task = {
            **self.task,
            "metadata": {**meta, "resourceVersion": version},
            "status": {**(self.task.get("status") or {}), **status},
        }
        return self.task

    async def remove_finalizer(self, namespace: str, pod: dict[str, Any]) -> None:
        self.calls.append(f"release {pod['metadata']['name']}")

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.calls.append(f"delete {name}")

    async def create_pod(
        self, namespace: str, body: dict[str, Any]
    ) -> Literal["created", "exists"]:
        from kubemap_operator.kubeapi import Throttled

        if self.throttle_after is not None and len(self.created) >= self.throttle_after:
            raise Throttled(retry_after=7.0)
        self.created.append(body["metadata"]["name"])
        self.calls.append(f"create {body['metadata']['name']}")
        return "created"

    async def delete_task(self, namespace: str, name: str) -> None:
        self.calls.append("delete-task")


def cache_of(api: FakeApi) -> WatchCache:
    """The watches' view: the fake's task as it is now (later writes show only through the
    reconciler's own write-through) and its pod list (the test edits it as the watch would)."""
    name = api.task["metadata"]["name"]
    return WatchCache({(NS, name): [api.task]}, {(NS, task_label(name)): api.pods})


def _succeeded_pod(name: str, index: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"kubemap.io/index": str(index)},
            "finalizers": [POD_FINALIZER],
            "ownerReferences": [
                {"uid": "uid-t", "controller": True, "kind": "MapTask", "name": "t"}
            ],
        },
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 0}}}],
        },
    }


@pytest.mark.asyncio
async def test_outcome_is_recorded_before_the_finalizer_goes_and_before_new_pods() -> None:
    import logging

    from kubemap_operator.tasks.reconcile import Reconciler

    task = maptask("t", count=4, parallelism=2)
    task["metadata"]["uid"] = "uid-t"
    api = FakeApi(task, [_succeeded_pod("t-0-0", 0)])
    reconciler = Reconciler(api, Settings(metrics_port=0), cache=cache_of(api))
    await reconciler.reconcile(NS, "t", logging.getLogger("test"))
    assert api.calls == [
        "status 0",
        "release t-0-0",
        "delete t-0-0",
        "create t-1-0",
        "create t-2-0",
    ]


@pytest.mark.asyncio
async def test_http_429_pauses_creation_for_retry_after() -> None:
    import logging

    from kubemap_operator.ratelimit import TokenBucket
    from kubemap_operator.tasks.reconcile import Reconciler

    task = maptask("t", count=10, parallelism=10)
    task["metadata"]["uid"] = "uid-t"
    api = FakeApi(task, [], throttle_after=2)
    now = [100.0]
    bucket = TokenBucket(rate=5, burst=3, clock=lambda: now[0])
    reconciler = Reconciler(api, Settings(metrics_port=0), cache=cache_of(api), limiter=bucket)
    await reconciler.reconcile(NS, "t", logging.getLogger("test"))
    assert len(api.created) == 2  # the third create got 429: the round stops there
    assert bucket.delay() == pytest.approx(7.0)  # nobody creates until Retry-After has passed
    now[0] += 7.0
    assert bucket.delay() == 0.0


@pytest.mark.asyncio
async def test_http_429_halves_the_creation_rate_shown_in_status_until_it_recovers() -> None:
    import logging

    from kubemap_operator.ratelimit import TokenBucket
    from kubemap_operator.tasks.reconcile import Reconciler

    task = maptask("t", count=40, parallelism=40)
    task["metadata"]["uid"] = "uid-t"
    api = FakeApi(task, [], throttle_after=2)
    now = [100.0]
    bucket = TokenBucket(rate=20, burst=3, clock=lambda: now[0])
    settings = Settings(metrics_port=0, pod_create_burst=3)  # 3 creates a round
    reconciler = Reconciler(api, settings, cache=cache_of(api), limiter=bucket)
    await reconciler.reconcile(NS, "t", logging.getLogger("test"))
    # One 429: half the rate really sent (3 creates in the last second), not of the QPS;
    # no failure counted, no retry spent.
    assert bucket.rate == 1.5
    assert api.patches[-1]["podCreateRate"] == 1.5
    assert reconciler.backoff.failures((NS, "t")) == 0
    now[0] += 7.0
    api.throttle_after = None
    while bucket.limited:  # successful creates add a tenth of the QPS back each second
        now[0] += 0.5
        bucket.succeeded()
    assert bucket.rate == 20
    await reconciler.reconcile(NS, "t", logging.getLogger("test"))
    assert api.patches[-1]["podCreateRate"] is None  # recovered: the field is removed


@pytest.mark.asyncio
async def test_http_429_on_a_status_write_slows_down_without_a_failure() -> None:
    from kubemap_operator.ratelimit import TokenBucket
    from kubemap_operator.tasks.reconcile import Reconciler
    from kubernetes.client.exceptions import ApiException

    class ThrottledWrites(FakeApi):
        async def patch_status(
            self, namespace: str, name: str, status: dict[str, Any]
        ) -> dict[str, Any]:
            exc = ApiException(status=429, reason="Too Many Requests")
            exc.headers = {"Retry-After": "3"}
            raise exc

    task = maptask("t", count=2, parallelism=2)
    task["metadata"]["uid"] = "uid-t"
    api = ThrottledWrites(task, [])
    now = [100.0]
    bucket = TokenBucket(rate=20, burst=3, clock=lambda: now[0])
    reconciler = Reconciler(api, Settings(metrics_port=0), cache=cache_of(api), limiter=bucket)
    delay = await reconciler.run_once((NS, "t"))
    assert delay == 3.0  # as told by Retry-After
    assert reconciler.backoff.failures((NS, "t")) == 0  # not a failure
    assert bucket.limited and bucket.delay() == pytest.approx(3.0)


@pytest.mark.asyncio
async def test_token_bucket_rate_and_burst() -> None:
    from kubemap_operator.ratelimit import TokenBucket

    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])

    async def take_free() -> int:
        """Tokens taken without waiting (the clock stands still)."""
        taken = 0
        while bucket.delay() == 0:
            await bucket.acquire()
            taken += 1
        return taken

    assert await take_free() == 3
    assert bucket.delay() == pytest.approx(0.5)
    now[0] += 0.5
    assert await take_free() == 1
    now[0] += 100
    assert await take_free() == 3  # never more than the burst


@pytest.mark.asyncio
async def test_an_invalid_spec_fails_with_a_condition_naming_the_field() -> None:
    import logging

    from kubemap_operator.tasks.reconcile import Reconciler

    task = maptask("t", count=4, parallelism=2)
    task["metadata"]["uid"] = "uid-t"
    task["spec"]["template"] = {}  # container mode without an image: only the model refuses it
    api = FakeApi(task, [])
    await Reconciler(api, Settings(metrics_port=0), cache=cache_of(api)).reconcile(
        NS, "t", logging.getLogger("t")
    )
    assert api.created == []
    (status,) = api.patches
    assert status["phase"] == "Failed"
    assert status["conditions"][-1]["reason"] == "InvalidSpec"
    assert status["message"].startswith("invalid spec: spec: container mode needs template.image")
    from kubemap.core.status import Reason, run_status

    seen = run_status(status, total=4)
    assert seen.reason is Reason.INVALID_SPEC  # the SDK sees the reason, not a generic failure


@pytest.mark.asyncio
async def test_api_errors_back_off_per_task_and_a_success_resets() -> None:
    """Before: every failed reconcile came back after a fixed 2 s, however long the API failed."""
    from kubemap_operator.tasks.reconcile import Reconciler
    from kubernetes.client.exceptions import ApiException

    class FlakyApi(FakeApi):
        broken = True

        async def patch_status(
            self, namespace: str, name: str, status: dict[str, Any]
        ) -> dict[str, Any]:
            if self.broken:
                raise ApiException(status=503, reason="Service Unavailable")
            return await super().patch_status(namespace, name, status)

    task = maptask("t", count=4, parallelism=2)
    task["metadata"]["uid"] = "uid-t"
    api = FlakyApi(task, [])
    reconciler = Reconciler(api, Settings(metrics_port=0), cache=cache_of(api))
    key = (NS, "t")
    assert [await reconciler.run_once(key) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert reconciler.backing_off(NS, "t")  # the periodic timer leaves it to its backoff
    api.broken = False
    assert await reconciler.run_once(key) not in (16.0, 0.5)  # the plan's own requeue
    assert not reconciler.backing_off(NS, "t")
    api.broken = True
    reconciler.cache.forget(NS, "t")  # back to the watch's task, whose status is not written yet
    assert await reconciler.run_once(key) == 0.5  # the next failure starts over


def _running_pod(name: str, index: int) -> dict[str, Any]:
    pod = _succeeded_pod(name, index)
    pod["status"] = {"phase": "Running"}
    return pod


@pytest.mark.asyncio
async def test_a_reconcile_reads_the_watch_cache_not_the_api() -> None:
    """Before: every reconcile made a GET of the MapTask and a LIST of its pods."""
    import logging

    from kubemap_operator.tasks.reconcile import Reconciler

    task = maptask("t", count=4, parallelism=2)
    task["metadata"]["uid"] = "uid-t"
    api = FakeApi(task, [])
    reconciler = Reconciler(api, Settings(metrics_port=0), cache=cache_of(api))
    log = logging.getLogger("test")
    await reconciler.reconcile(NS, "t", log)
    assert api.calls == ["status ", "create t-0-0", "create t-1-0"]
    # Steady state: the pods run, events come (each one a reconcile), nothing is to be done.
    api.pods[:] = [_running_pod("t-0-0", 0), _running_pod("t-1-0", 1)]
    await reconciler.reconcile(NS, "t", log)  # the watch shows them: one status write (active 2)
    api.calls.clear()
    for _ in range(5):
        await reconciler.reconcile(NS, "t", log)
    assert api.calls == []  # 0 API calls per reconcile: no GET, no LIST, no write


@pytest.mark.asyncio
async def test_a_lagging_watch_neither_undoes_a_status_nor_creates_a_pod_twice() -> None:
    """The watch shows neither the status just written nor the pod just created: the next
    reconcile still plans from them (the cache lays the operator's own writes over it)."""
    import logging

    from kubemap_operator.tasks.reconcile import Reconciler

    task = maptask("t", count=4, parallelism=2)
    task["metadata"]["uid"] = "uid-t"
    api = FakeApi(task, [_succeeded_pod("t-0-0", 0), _running_pod("t-1-0", 1)])
    reconciler = Reconciler(api, Settings(metrics_port=0), cache=cache_of(api))
    log = logging.getLogger("test")
    await reconciler.reconcile(NS, "t", log)
    assert api.calls == ["status 0", "release t-0-0", "delete t-0-0", "create t-2-0"]
    # The watch has shown none of it yet: t-0-0 is not released and deleted again (a 404 each)
    # and t-2-0 not created again (a 409); index 0 stays done. Only `active` is new: t-2-0.
    api.calls.clear()
    await reconciler.reconcile(NS, "t", log)
    assert api.calls == ["status 0"]
    assert api.patches[-1]["active"] == 2
    # Then the watch shows t-0-0 gone before the MapTask's status event (two streams).
    api.calls.clear()
    api.pods[:] = [_running_pod("t-1-0", 1)]
    await reconciler.reconcile(NS, "t", log)
    assert api.calls == []


@pytest.mark.asyncio
async def test_the_logs_of_failed_pods_beyond_those_kept_are_recorded_before_they_go() -> None:
    """The log keeper reads logs through the API's CoreV1Api, not through the cache's writer
    (which has none: the e2e test of kept logs found no ConfigMap)."""
    import logging

    from kubemap_operator.tasks.reconcile import Reconciler
    from test_logkeeper import FakeCore, failed_pod

    task = maptask("t", count=3, parallelism=3, backoffLimitPerIndex=0, minSuccessRatio=0)
    task["metadata"]["uid"] = "uid-t"
    pods = [failed_pod(i) for i in range(3)]
    for pod in pods:
        pod["metadata"]["finalizers"] = [POD_FINALIZER]
        pod["metadata"]["ownerReferences"] = [{"uid": "uid-t", "controller": True, "name": "t"}]
    api = FakeApi(task, pods)
    api.core = FakeCore(logs={"t-0-0": "boom at 0\n"})  # type: ignore[attr-defined]
    settings = Settings(metrics_port=0, failed_pods_kept=1)
    reconciler = Reconciler(api, settings, cache=cache_of(api))
    await reconciler.reconcile(NS, "t", logging.getLogger("test"))
    deleted = [c for c in api.calls if c.startswith("delete ")]
    assert len(deleted) == 2  # one failed pod is kept, the other two go
    kept = api.core.maps["t-logs"]["data"]  # type: ignore[attr-defined]
    assert {c.removeprefix("delete t-").removesuffix("-0") for c in deleted} <= set(kept)
