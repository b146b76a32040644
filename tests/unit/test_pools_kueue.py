"""A WorkerPool in a Kueue queue (spec.queueName): the Deployment's labels and requests, the
census of admitted and waiting workers, the status written only on change, the queue's
problems said in the status, and chunks sized by the workers that can lease."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from kubemap.core.slicing import guided_chunk
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Mode, Speculation, StoreRef
from kubemap.resources.workerpool import WorkerPoolSpec, WorkerPoolStatus
from kubemap_operator.pools.builder import deployment
from kubemap_operator.pools.census import WorkerPod, count_workers, worker_pod_state
from kubemap_operator.pools.dispatch import Dispatcher
from kubemap_operator.pools.reconcile import PoolReconciler
from kubemap_operator.settings import Settings
from pydantic import ValidationError

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
POOL = ("ns", "shared")
HALF_CPU = {"requests": {"cpu": "500m"}}


def test_a_queued_pool_labels_its_deployment_and_pods_and_requests_its_resources() -> None:
    spec = WorkerPoolSpec(replicas=6, queue_name="team-a", resources=HALF_CPU)
    dep = deployment("ns", "shared", "uid", spec, 6, Settings())
    assert dep["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    template = dep["spec"]["template"]
    assert template["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    # Kueue admits each pod by its requests: they must be on the container.
    assert template["spec"]["containers"][0]["resources"] == HALF_CPU
    # The selector stays the pool's alone: a change of queue is a rollout, not a new selector.
    assert dep["spec"]["selector"] == {"matchLabels": {"kubemap.io/pool": "shared"}}
    plain = deployment("ns", "shared", "uid", WorkerPoolSpec(replicas=6), 6, Settings())
    assert QUEUE_LABEL not in plain["metadata"]["labels"]
    assert QUEUE_LABEL not in plain["spec"]["template"]["metadata"]["labels"]
    assert (
        plain["metadata"]["annotations"]["kubemap.io/template-hash"]
        != dep["metadata"]["annotations"]["kubemap.io/template-hash"]
    )


def test_a_queue_name_must_be_a_dns_label() -> None:
    with pytest.raises(ValidationError):
        WorkerPoolSpec(queue_name="Team A")


def pod(name: str, *gates: str, phase: str = "Pending", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"schedulingGates": [{"name": g} for g in gates]},
        "status": {"phase": phase},
    }


@pytest.mark.parametrize(
    ("body", "state"),
    [
        (pod("a", "kueue.x-k8s.io/admission", "kueue.x-k8s.io/topology"), WorkerPod.WAITING),
        (pod("a", "kueue.x-k8s.io/topology"), WorkerPod.ADMITTED),  # quota held, being placed
        (pod("a"), WorkerPod.ADMITTED),  # ungated, not yet running
        (pod("a", phase="Running"), WorkerPod.ADMITTED),
        (pod("a", "example.com/other", phase="Pending"), WorkerPod.ADMITTED),  # not Kueue's
        (pod("a", phase="Running", deleting=True), None),  # scale-in frees its quota
        (pod("a", "kueue.x-k8s.io/admission", deleting=True), None),
        (pod("a", phase="Failed"), None),
        (pod("a", phase="Succeeded"), None),
    ],
)
def test_a_pool_pod_counts_as_admitted_waiting_or_not_at_all(
    body: dict[str, Any], state: WorkerPod | None
) -> None:
    assert worker_pod_state(body) is state


def test_workers_are_counted_admitted_and_waiting() -> None:
    pods = [
        pod("a", "kueue.x-k8s.io/admission", "kueue.x-k8s.io/topology"),
        pod("b", "kueue.x-k8s.io/admission"),
        pod("c", phase="Running"),
        pod("d"),
        pod("e", phase="Running", deleting=True),
    ]
    counts = count_workers(pods)
    assert (counts.admitted, counts.waiting) == (2, 2)


class FakePoolApi:
    """The calls of the pool reconcile, counted; the Deployment kept as the API would."""

    def __init__(self, spec: dict[str, Any], *, kueue: bool = True, queues: set[str]) -> None:
        self.pool: dict[str, Any] = {
            "metadata": {"name": POOL[1], "uid": "uid-1", "creationTimestamp": None},
            "spec": spec,
            "status": {},
        }
        self.kueue = kueue
        self.queues = queues
        self.deployment: dict[str, Any] | None = None
        self.status_patches: list[dict[str, Any]] = []
        self.queue_reads = 0
        self.pods: dict[str, dict[str, Any]] = {}
        self.pod_lists = 0
        self.ready = 0  # the Deployment's readyReplicas

    async def get_pool(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.pool)

    async def patch_pool_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status_patches.append(status)
        self.pool["status"] = {k: v for k, v in {**self.pool["status"], **status}.items() if v}

    async def put_secret(self, namespace: str, body: dict[str, Any]) -> None:
        pass

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.deployment is None:
            return None
        return {**copy.deepcopy(self.deployment), "status": {"readyReplicas": self.ready}}

    async def create_deployment(self, namespace: str, body: dict[str, Any]) -> None:
        self.deployment = copy.deepcopy(body)

    async def patch_deployment(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        assert self.deployment is not None
        self.deployment["spec"].update(patch.get("spec") or {})

    async def list_pool_pods(self, namespace: str, pool: str) -> list[dict[str, Any]]:
        self.pod_lists += 1
        return [copy.deepcopy(p) for p in self.pods.values()]

    def see(self, body: dict[str, Any]) -> None:
        self.pods[body["metadata"]["name"]] = body

    async def find_local_queue(self, namespace: str, name: str) -> str:
        self.queue_reads += 1
        if not self.kueue:
            return "no-kueue"
        return "found" if name in self.queues else "missing"


def reconciler(api: FakePoolApi, dispatcher: Dispatcher | None = None) -> PoolReconciler:
    return PoolReconciler(api, dispatcher or Dispatcher(), Settings(), b"key")  # type: ignore[arg-type]


def status_of(api: FakePoolApi) -> WorkerPoolStatus:
    return WorkerPoolStatus.model_validate(api.pool["status"])


def queued_spec(queue: str = "team-a") -> dict[str, Any]:
    return {"replicas": 6, "queueName": queue, "resources": HALF_CPU, "idleTtlSeconds": 0}


def test_status_counts_admitted_and_waiting_workers_and_is_written_only_on_change() -> None:
    api = FakePoolApi(queued_spec(), queues={"team-a"})
    pools = reconciler(api)
    for i in range(6):  # Kueue's webhook gates every pod of the Deployment
        api.see(pod(f"w{i}", "kueue.x-k8s.io/admission"))
    for i in range(4):  # ...and admits four: 2 CPUs of 500m workers
        api.see(pod(f"w{i}", phase="Running"))
    asyncio.run(pools.reconcile(*POOL))  # makes the Deployment
    st = status_of(api)
    assert (st.replicas, st.admitted, st.waiting, st.message) == (6, 4, 2, None)
    assert api.deployment is not None and api.deployment["spec"]["replicas"] == 6
    api.ready = 4
    assert asyncio.run(pools.reconcile(*POOL)) is None  # steady: no polling while 2 wait
    assert status_of(api).ready == 4 and len(api.status_patches) == 2
    asyncio.run(pools.reconcile(*POOL))
    assert len(api.status_patches) == 2  # nothing changed: nothing written
    # An admitted worker is deleted (scale-in, preemption): a waiting one takes its quota.
    api.see(pod("w0", phase="Running", deleting=True))
    api.see(pod("w4"))
    asyncio.run(pools.reconcile(*POOL))
    assert (status_of(api).admitted, status_of(api).waiting) == (4, 1)
    assert len(api.status_patches) == 3


def test_a_pool_outside_kueue_reports_no_admission_counts() -> None:
    api = FakePoolApi({"replicas": 2}, kueue=False, queues=set())
    pools = reconciler(api)
    api.see(pod("w0", phase="Running"))
    asyncio.run(pools.reconcile(*POOL))
    st = status_of(api)
    assert st.admitted is None and st.waiting is None and st.message is None
    assert api.queue_reads == 0 and api.pod_lists == 0  # no queue: no LIST, no Kueue read


def test_a_missing_localqueue_is_said_with_the_command_that_lists_queues() -> None:
    api = FakePoolApi(queued_spec("nope"), queues={"team-a"})
    asyncio.run(reconciler(api).reconcile(*POOL))
    message = status_of(api).message or ""
    assert "LocalQueue 'nope' does not exist in namespace ns" in message
    assert "kubectl get localqueues -n ns" in message
    # The workers are made all the same: Kueue holds them until the queue exists.
    assert api.deployment is not None and api.deployment["spec"]["replicas"] == 6


def test_a_queue_without_kueue_runs_no_worker_and_says_why() -> None:
    api = FakePoolApi(queued_spec(), kueue=False, queues=set())
    asyncio.run(reconciler(api).reconcile(*POOL))
    message = status_of(api).message or ""
    assert "Kueue is not installed" in message and "localqueues.kueue.x-k8s.io" in message
    assert "'team-a'" in message and "no worker runs" in message
    assert api.deployment is not None and api.deployment["spec"]["replicas"] == 0


def task_spec(n: int) -> MapTaskSpec:
    # Without speculation: with it, chunks are capped by the backup budget, not the workers
    return MapTaskSpec(
        mode=Mode.FUNCTION,
        count=n,
        store=StoreRef(url="s3://b/p"),
        pool=POOL[1],
        parallelism=100,
        speculation=Speculation(enabled=False),
    )


def first_chunk(dispatcher: Dispatcher, total: int) -> int:
    dispatcher.sync(("ns", "t"), "u", task_spec(total), MapTaskStatus(), "s3://b/p/t", None, 1)
    grant = asyncio.run(dispatcher.lease(POOL, "w0", "3.11", 0))
    assert grant is not None
    return grant.count


@pytest.mark.parametrize(
    ("queued", "admitted", "live", "sized_for"),
    [
        (True, 4, 1, 4),  # 6 wanted, 4 admitted, 1 up yet: sized for the 4 that will lease
        (True, 4, 5, 5),  # more workers leasing than the census knows: they count
        (True, 0, 1, 1),  # nothing admitted yet: the one asking
        (False, 6, 1, 6),  # outside Kueue every wanted replica will lease
    ],
)
def test_chunks_are_sized_by_the_workers_that_lease_not_the_replicas_wanted(
    queued: bool, admitted: int, live: int, sized_for: int
) -> None:
    dispatcher = Dispatcher()
    spec = queued_spec() if queued else {"replicas": 6, "idleTtlSeconds": 0}
    api = FakePoolApi(spec, queues={"team-a"})
    pools = reconciler(api, dispatcher)
    for i in range(6):
        gates = () if i < admitted else ("kueue.x-k8s.io/admission",)
        api.see(pod(f"w{i}", *gates))
    asyncio.run(pools.reconcile(*POOL))
    for i in range(1, live):
        dispatcher.seen(POOL, f"w{i}", "3.11")
    total = 1000
    assert first_chunk(dispatcher, total) == guided_chunk(total, sized_for)
    assert guided_chunk(total, sized_for) != guided_chunk(total, 6) or sized_for == 6
