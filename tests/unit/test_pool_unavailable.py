"""A MapTask with spec.pool on an operator without the dispatcher (chart pools.enabled=false).

Before: the reconciler fell back to the pod path with the pool task's shape (one item per
pod, parallelism 10,000). Now the task fails at once, with a PoolUnavailable condition whose
message names the fix, and no pod is made; a rerun request (kubemap.io/retry) is answered the
same way. Run by kopf itself against KMock, as tests/unit/test_handlers_kmock.py does, with
every controller's handlers (kubemap_operator.registry): the pool-task controller refuses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import test_handlers_kmock
from kubemap.contract import ANNOTATION_RETRY
from kubemap.core.status import Reason, run_status
from kubemap_operator.pools.pooltasks import PoolTasks
from kubemap_operator.registry import build_registry
from kubemap_operator.settings import Settings
from test_handlers_kmock import NS, FakeApi, maptask, running_operator, until


@pytest.fixture
def every_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    """running_operator with the whole operator's registry, not only the pod controller's."""

    def both(settings: Settings, api_factory: Any, **kw: Any) -> tuple[Any, None]:
        return build_registry(settings, api_factory, **kw), None

    monkeypatch.setattr(test_handlers_kmock, "build_registry", both)


def pool_task(name: str, count: int = 6) -> dict[str, Any]:
    body = maptask(
        name,
        mode="Function",
        count=count,
        itemsPerPod=1,
        parallelism=10_000,
        pool="scorers",
        store={"url": "s3://bucket/prefix"},
    )
    del body["spec"]["template"]  # function mode: the SDK's image, no container template
    return body


def assert_refused(status: dict[str, Any]) -> None:
    assert status["phase"] == "Failed", status
    condition = status["conditions"][-1]
    assert condition["type"] == "Failed" and condition["reason"] == "PoolUnavailable"
    for fix in ("pools.enabled", "spec.pool", "'scorers'"):
        assert fix in status["message"], (fix, status["message"])
    assert run_status(status, total=6).reason is Reason.POOL_UNAVAILABLE  # what the SDK reads


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_pool_task_without_a_dispatcher_fails_naming_the_fix_and_starts_no_pod(
    every_controller: None,
) -> None:
    settings = Settings(reconcile_interval=1.0, metrics_port=0, dispatcher_port=0)
    async with running_operator(settings) as cluster:
        await asyncio.to_thread(
            cluster.custom.create_namespaced_custom_object,
            "kubemap.io", "v1alpha1", NS, "maptasks", pool_task("pooled"),
        )  # fmt: skip

        async def decided() -> bool:
            status = (await cluster.task("pooled")).get("status") or {}
            return status.get("phase") == "Failed" or bool(await cluster.pods())

        await until(decided)
        await asyncio.sleep(2.5)  # two more resync ticks: still no pod, still refused
        assert [p["metadata"]["name"] for p in await cluster.pods()] == []
        assert_refused((await cluster.task("pooled"))["status"])


@pytest.mark.asyncio
async def test_a_rerun_of_a_pool_task_without_a_dispatcher_is_refused_and_answered() -> None:
    task = pool_task("again")
    task["metadata"]["annotations"] = {ANNOTATION_RETRY: "token-2"}
    task["status"] = {
        "phase": "Failed",
        "total": 6,
        "succeeded": 4,
        "succeededIndexes": "0-3",
        "retryToken": "token-1",
    }
    api = FakeApi(task, [])
    controller = PoolTasks(api, Settings(metrics_port=0, dispatcher_port=0), dispatcher=None)
    await controller.reconcile(NS, "again", logging.getLogger("t"))
    assert api.created == []  # not 2 pods of one item each
    (status,) = api.patches
    assert_refused(status)
    # the SDK waits for its token to be honoured: without it, retry() would wait for ever
    assert status["retryToken"] == "token-2" and status["succeededIndexes"] == "0-3"
