"""The pool-task controller (kubemap_operator.pools.pooltasks), beside the MapTask (pod)
controller: tasks with spec.pool are routed to it by their spec, it runs them through the
dispatcher, waits for a finished one's TTL, and reruns one on kubemap.io/retry through the
pool. Counted: API calls (status patches, task deletes) and pods created (none)."""

from __future__ import annotations

import ast
import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubemap.contract import ANNOTATION_RETRY
from kubemap.core.ranges import IndexRanges
from kubemap_operator.pools.dispatch import Dispatcher
from kubemap_operator.pools.handlers import has_pool
from kubemap_operator.pools.pooltasks import PoolTasks
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.handlers import without_pool
from kubemap_operator.tasks.observe import WorkerReport
from test_handlers_kmock import NS, FakeApi

OPERATOR = Path(__file__).resolve().parents[2] / "operator" / "kubemap_operator"
LOG = logging.getLogger("t")
SETTINGS = Settings(metrics_port=0)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def pool_task(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "t", "namespace": NS, "uid": "uid-t", "generation": 1},
        "spec": {"mode": "Function", "count": 4, "pool": "p", "store": {"url": "s3://b/p"}, **spec},
        "status": status or {},
    }


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_pod_controller_imports_nothing_of_the_pool_side() -> None:
    offenders = {
        str(path.relative_to(OPERATOR)): sorted(
            m for m in imported_modules(path) if m.startswith("kubemap_operator.pools")
        )
        for path in (OPERATOR / "tasks").glob("*.py")
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_each_maptask_has_exactly_one_controller_chosen_by_spec_pool() -> None:
    for spec in ({"pool": "p", "count": 3}, {"count": 3}, {"pool": None}, {"pool": ""}):
        assert has_pool(spec) != without_pool(spec), spec  # type: ignore[arg-type]


def test_a_finished_pool_task_waits_for_its_ttl_then_is_deleted() -> None:
    done = {"phase": "Succeeded", "total": 4, "succeeded": 4, "succeededIndexes": "0-3"}
    finished_at = NOW - timedelta(seconds=30)
    done["completionTime"] = finished_at.isoformat().replace("+00:00", "Z")
    api = FakeApi(pool_task(done, ttlSecondsAfterFinished=60), [])
    clock = [NOW]
    controller = PoolTasks(api, SETTINGS, Dispatcher(), clock=lambda: clock[0])
    requeue = asyncio.run(controller.reconcile(NS, "t", LOG))
    # nothing written, woken up when the TTL is due
    assert requeue == 30 and api.patches == [] and "delete-task" not in api.calls
    clock[0] = NOW + timedelta(seconds=30)
    assert asyncio.run(controller.reconcile(NS, "t", LOG)) is None
    assert api.calls.count("delete-task") == 1 and api.patches == [] and api.created == []


def test_a_running_pool_task_goes_through_the_dispatcher_and_then_to_its_ttl() -> None:
    api = FakeApi(pool_task(ttlSecondsAfterFinished=0), [])
    dispatcher = Dispatcher()
    controller = PoolTasks(api, SETTINGS, dispatcher)
    asyncio.run(controller.reconcile(NS, "t", LOG))
    assert api.patches[-1]["phase"] == "Running" and (NS, "t") in dispatcher.tasks
    grant = asyncio.run(dispatcher.lease((NS, "p"), "w", "3.11", 0))
    assert grant is not None and (grant.start, grant.count) == (0, 4)
    everything = WorkerReport(IndexRanges.span(0, 4), IndexRanges())
    assert dispatcher.report((NS, "p"), grant.lease_id, "ok", everything)
    asyncio.run(controller.reconcile(NS, "t", LOG))
    assert api.patches[-1]["phase"] == "Succeeded"
    assert api.calls[-1] == "delete-task" and api.created == []  # its TTL of 0 is due
    assert (NS, "t") not in dispatcher.tasks


def test_a_retry_of_a_finished_pool_task_reruns_through_the_pool() -> None:
    failed = {
        "phase": "Failed", "total": 4, "succeeded": 3, "failed": 1,
        "succeededIndexes": "0-1,3", "failedIndexes": "2", "retryToken": "r0",
    }  # fmt: skip
    body = pool_task(failed)
    body["metadata"]["annotations"] = {ANNOTATION_RETRY: "r1"}
    api = FakeApi(body, [])
    dispatcher = Dispatcher()
    controller = PoolTasks(api, SETTINGS, dispatcher)
    asyncio.run(controller.reconcile(NS, "t", LOG))
    assert api.patches[-1]["retryToken"] == "r1" and api.patches[-1]["phase"] == "Running"
    grant = asyncio.run(dispatcher.lease((NS, "p"), "w", "3.11", 0))
    assert grant is not None and (grant.start, grant.count, grant.version) == (2, 1, "r1")
    assert api.created == []  # a lease, not a pod


class _Failing(FakeApi):
    """The API server answers 503 for the task `failures` times, then recovers."""

    def __init__(self, failures: int) -> None:
        super().__init__(pool_task(), [])
        self.failures = failures

    async def get_task(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.failures:
            self.failures -= 1
            from kubernetes.client.exceptions import ApiException

            raise ApiException(status=503, reason="unavailable")
        return await super().get_task(namespace, name)


def test_api_errors_back_off_per_task_exponentially_and_reset_on_success() -> None:
    api = _Failing(failures=4)
    controller = PoolTasks(api, SETTINGS, Dispatcher())
    delays = [asyncio.run(controller._run_once((NS, "t"))) for _ in range(4)]
    assert delays == [0.5, 1.0, 2.0, 4.0]  # not a fixed 2 s
    asyncio.run(controller._run_once((NS, "t")))  # the API answers again
    assert controller.backoff.failures((NS, "t")) == 0
