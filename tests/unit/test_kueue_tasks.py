"""A MapTask under Kueue, without a cluster: what the operator makes of a pod Kueue gates or
preempts (observe -> planner -> core.plan), the pods the builder labels, and the reconciler's
refusal of a queue that does not exist (issue 21, item 1).

- gated (scheduling gate kueue.x-k8s.io/admission): waiting for quota. Not stuck however long
  it waits, no retry, the status says "waiting for quota in queue X".
- preempted (TerminationTarget, reason WorkloadEvictedDueToPreempted; Kueue deletes it, exit
  143): requeued at once like a pod lost with its node, but no user retry and no
  infrastructure budget spent (status.preempted counts it, status.retries does not).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from kubemap.contract import LABEL_TASK, POD_FINALIZER, task_label
from kubemap.core.status import Phase, Reason
from kubemap.resources.kueue import ADMISSION_GATE, QUEUE_LABEL
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus
from kubemap_operator.kubeapi import QueueLookup
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.builder import TaskRef, build_pod
from kubemap_operator.tasks.observe import ObservedPod, PodState, observe_pod
from kubemap_operator.tasks.planner import PodRequest, plan
from kubemap_operator.tasks.reconcile import Reconciler
from kubemap_operator.tasks.watchcache import WatchCache

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
TASK = TaskRef("t", "ns", "uid-t")
SETTINGS = Settings(s3_endpoint="http://127.0.0.1:8333", worker_image="kubemap:test")


def spec(**kw: Any) -> MapTaskSpec:
    base: dict[str, Any] = {
        "mode": "Container",
        "count": 4,
        "parallelism": 4,
        "template": {"image": "busybox"},
        "queueName": "lq",
    }
    return MapTaskSpec.model_validate({**base, **kw})


def running() -> MapTaskStatus:
    return MapTaskStatus(phase=Phase.RUNNING, start_time="2026-01-01T11:00:00Z")


def built(start: int, *, attempt: int = 0, failures: int = 0, infra: int = 0) -> dict[str, Any]:
    """The pod the builder makes, as Kueue's webhook leaves it: gated, queue-labelled."""
    request = PodRequest(start, 1, attempt=attempt, failures=failures, infra_failures=infra)
    pod = build_pod(TASK, spec(), request, SETTINGS)
    pod["metadata"]["creationTimestamp"] = "2026-01-01T11:00:00Z"
    pod["spec"]["schedulingGates"] = [
        {"name": ADMISSION_GATE},
        {"name": "kueue.x-k8s.io/topology"},
    ]
    pod["status"] = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "SchedulingGated",
                "lastTransitionTime": "2026-01-01T11:00:00Z",
            }
        ],
    }
    return pod


def admitted_running(start: int, **kw: Any) -> dict[str, Any]:
    pod = built(start, **kw)
    pod["spec"]["schedulingGates"] = []
    pod["status"] = {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}
    return pod


def preempted(
    start: int, reason: str = "WorkloadEvictedDueToPreempted", **kw: Any
) -> dict[str, Any]:
    """What Kueue leaves of a pod it preempted: TerminationTarget, deleted, Failed 143."""
    pod = admitted_running(start, **kw)
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T11:59:58Z"
    pod["metadata"]["deletionGracePeriodSeconds"] = 30
    pod["status"] = {
        "phase": "Failed",
        "conditions": [
            {
                "type": "TerminationTarget",
                "status": "True",
                "reason": reason,
                "message": "Preempted to accommodate a workload (UID: x) due to prioritization",
            }
        ],
        "containerStatuses": [
            {
                "state": {
                    "terminated": {
                        "exitCode": 143,
                        "reason": "Error",
                        "finishedAt": "2026-01-01T11:59:59Z",
                    }
                }
            }
        ],
    }
    return pod


def seen(pod: dict[str, Any]) -> ObservedPod:
    found = observe_pod(pod, NOW)
    assert found is not None
    return found


def test_the_builder_labels_pods_with_the_queue_and_sets_their_priority() -> None:
    pod = build_pod(
        TASK,
        spec(template={"image": "busybox", "priorityClassName": "high"}),
        PodRequest(0, 1),
        SETTINGS,
    )
    assert pod["metadata"]["labels"][QUEUE_LABEL] == "lq"
    assert pod["spec"]["priorityClassName"] == "high"
    # No queue named: the chart's default queue; none there either: no label (Kueue then
    # applies the namespace's LocalQueue "default" itself, if there is one).
    plain = spec(queueName=None)
    chart = Settings(worker_image="kubemap:test", default_queue="team-a")
    assert build_pod(TASK, plain, PodRequest(0, 1), chart)["metadata"]["labels"][QUEUE_LABEL] == (
        "team-a"
    )
    bare = build_pod(TASK, plain, PodRequest(0, 1), SETTINGS)
    assert QUEUE_LABEL not in bare["metadata"]["labels"]
    assert "priorityClassName" not in bare["spec"]


def test_a_gated_pod_waits_for_quota_however_long_and_is_never_stuck() -> None:
    pod = built(0)
    # Gated for an hour, with PodScheduled=False: a pod the scheduler cannot place would have
    # failed as unschedulable after 120 s; this one waits for its queue.
    pod["status"]["conditions"][0]["lastTransitionTime"] = "2026-01-01T10:00:00Z"
    one = seen(pod)
    assert one.state is PodState.ACTIVE and one.queued == "lq"
    assert not one.stuck and one.cause is None and not one.launched
    result = plan(spec(), running(), [one, seen(admitted_running(1)), seen(built(2))], NOW)
    assert result.create == (PodRequest(3, 1),)  # parallelism 4: the upper bound, not more
    assert result.status.queued == 2 and result.status.active == 3
    assert result.status.message is not None
    assert result.status.message.startswith("waiting for quota in queue lq")
    assert result.status.phase is Phase.RUNNING and result.status.failed == 0
    assert result.status.retries == 0 and not result.delete and not result.stop


def test_an_admitted_pod_is_no_longer_waiting() -> None:
    result = plan(spec(count=1), running(), [seen(admitted_running(0))], NOW)
    assert result.status.queued == 0 and result.status.message is None


PREEMPTIONS = [
    # (name, failures and infra failures of the slice before)
    ("first attempt", 0, 0),
    ("after a user failure and an infrastructure failure", 1, 2),
    ("at the infrastructure limit", 0, 5),
]


@pytest.mark.parametrize(
    ("name", "failures", "infra"), PREEMPTIONS, ids=[p[0] for p in PREEMPTIONS]
)
def test_a_preempted_pod_is_requeued_without_spending_anything(
    name: str, failures: int, infra: int
) -> None:
    attempt = failures + infra
    victim = seen(preempted(1, attempt=attempt, failures=failures, infra=infra))
    assert victim.state is PodState.FAILED and victim.cause is not None
    assert victim.cause.key == ("lost", "Preempted")
    rules = spec(count=2, backoff_limit_per_index=1)
    result = plan(rules, running(), [seen(admitted_running(0)), victim], NOW)
    # At once (no backoff), the same counts: neither a retry nor the infrastructure budget.
    assert result.create == (
        PodRequest(
            1, 1, attempt=attempt + 1, failures=failures, infra_failures=infra, requeue=True
        ),
    )
    assert result.status.failed == 0 and result.status.phase is Phase.RUNNING
    # Not trouble: no InfrastructureTrouble condition, no Warning about it.
    assert not [c for c in result.status.conditions if c.type == "InfrastructureTrouble"]
    assert not [e for e in result.events if e.reason == "InfrastructureError"]
    # Kueue deleted it; our finalizer keeps it until its rerun exists, then lets it go (no
    # deadlock with Kueue's deletion: the pod is gone as soon as the rerun is created).
    assert victim.name not in result.release
    rerun = seen(built(1, attempt=attempt + 1, failures=failures, infra=infra))
    after = plan(rules, result.status, [seen(admitted_running(0)), victim, rerun], NOW)
    assert victim.name in after.release and not after.create


def test_ten_preemptions_in_a_row_never_fail_the_slice() -> None:
    status = running()
    for attempt in range(10):
        result = plan(spec(count=1), status, [seen(preempted(0, attempt=attempt))], NOW)
        (request,) = result.create
        assert (request.attempt, request.failures, request.infra_failures) == (attempt + 1, 0, 0)
        status = result.status
    assert status.phase is Phase.RUNNING and status.failed == 0


def test_kueues_other_evictions_are_lost_pods_and_spend_the_infrastructure_budget() -> None:
    victim = seen(preempted(0, reason="WorkloadEvictedDueToPodsReadyTimeout"))
    assert victim.cause is not None and victim.cause.key == ("lost", "PodsReadyTimeout")
    result = plan(spec(count=1), running(), [victim], NOW)
    assert result.create == (PodRequest(0, 1, attempt=1, failures=0, infra_failures=1),)


def test_a_preempted_pod_that_had_finished_counts_its_success_once() -> None:
    pod = preempted(0)
    pod["status"]["phase"] = "Succeeded"
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = 0
    result = plan(spec(count=1), running(), [seen(pod)], NOW)
    assert result.status.phase is Phase.SUCCEEDED and result.status.succeeded == 1
    assert not result.create


# --- The reconciler: the queue checked before the first pod, preemptions counted ---------


class FakeApi:
    def __init__(self, task: dict[str, Any], pods: list[dict[str, Any]], queue: str) -> None:
        self.task, self.pods, self.queue = task, pods, queue
        self.created: list[str] = []
        self.patches: list[dict[str, Any]] = []
        self.lookups: list[tuple[str, str]] = []

    async def find_local_queue(self, namespace: str, name: str) -> QueueLookup:
        self.lookups.append((namespace, name))
        answers: dict[str, QueueLookup] = {
            "found": "found",
            "none": "no-kueue",
            "missing": "missing",
            "forbidden": "unknown",
        }
        return answers[self.queue]

    async def get_task(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.task

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.patches.append(status)
        self.task = {**self.task, "status": {**(self.task.get("status") or {}), **status}}
        return self.task

    async def remove_finalizer(self, namespace: str, pod: dict[str, Any]) -> None:
        pass

    async def delete_pod(self, namespace: str, name: str) -> None:
        pass

    async def create_pod(
        self, namespace: str, body: dict[str, Any]
    ) -> Literal["created", "exists"]:
        self.created.append(body["metadata"]["name"])
        return "created"

    async def delete_task(self, namespace: str, name: str) -> None:
        pass


def maptask(status: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": "t", "namespace": "ns", "uid": "uid-t", "generation": 1},
        "spec": spec(**kw).to_wire(),
        "status": status or {},
    }


def reconciler(api: FakeApi, settings: Settings = SETTINGS) -> Reconciler:
    cache = WatchCache({("ns", "t"): [api.task]}, {("ns", task_label("t")): api.pods})
    return Reconciler(api, settings, cache=cache, queues=api)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("queue", "words"),
    [
        (
            "missing",
            ["LocalQueue 'lq' does not exist in namespace ns", "kubectl get localqueues -n ns"],
        ),
        ("none", ["Kueue is not installed", "localqueues.kueue.x-k8s.io"]),
    ],
)
async def test_a_queue_that_cannot_admit_fails_the_task_before_any_pod(
    queue: str, words: list[str]
) -> None:
    api = FakeApi(maptask(), [], queue)
    await reconciler(api).reconcile("ns", "t", logging.getLogger("test"))
    assert api.created == [] and api.lookups == [("ns", "lq")]
    (status,) = api.patches
    assert status["phase"] == "Failed"
    assert status["conditions"][-1]["reason"] == Reason.QUEUE_UNAVAILABLE.value
    for word in words:
        assert word in status["message"]


@pytest.mark.asyncio
@pytest.mark.parametrize("queue", ["found", "forbidden"])
async def test_a_queue_that_exists_is_read_once_then_pods_are_made(queue: str) -> None:
    # forbidden: the operator may not read LocalQueues (403): the pods go to Kueue unchecked.
    api = FakeApi(maptask(), [], queue)
    await reconciler(api).reconcile("ns", "t", logging.getLogger("test"))
    assert len(api.created) == 4 and api.lookups == [("ns", "lq")]
    # No queue anywhere: nothing to read.
    plain = FakeApi(maptask(queueName=None), [], "missing")
    await reconciler(plain).reconcile("ns", "t", logging.getLogger("test"))
    assert len(plain.created) == 4 and plain.lookups == []


@pytest.mark.asyncio
async def test_a_preempted_rerun_is_counted_as_preempted_not_as_a_retry() -> None:
    victim = preempted(1)
    victim["metadata"]["finalizers"] = [POD_FINALIZER, "kueue.x-k8s.io/managed"]
    victim["metadata"]["labels"][LABEL_TASK] = task_label("t")
    pods = [admitted_running(0), victim, admitted_running(2), admitted_running(3)]
    api = FakeApi(maptask({"phase": "Running", "startTime": "2026-01-01T11:00:00Z"}), pods, "found")
    await reconciler(api).reconcile("ns", "t", logging.getLogger("test"))
    assert api.created == ["t-1-1"] and api.lookups == []  # pods exist: no lookup
    assert {"preempted": 1} in api.patches
    assert all(p.get("retries", 0) == 0 for p in api.patches)
