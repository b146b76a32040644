"""A 1,000,000-item MapTask stays under 64 KiB in any state.

Two proofs: the worst status the bounds allow, serialised inside a whole, realistic object;
and the planner itself driven through scattered successes and failures at 1,000,000 items,
checking the object's size after every round.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from kubemap.core.ranges import IndexRanges
from kubemap.resources.maptask import Condition, MapTaskSpec, MapTaskStatus, Phase
from kubemap_operator.statusfields import (
    MAX_CONDITIONS,
    MAX_FAILED_RANGES,
    MAX_MESSAGE_LENGTH,
    MAX_SUCCEEDED_RANGES,
)
from kubemap_operator.tasks.observe import ObservedPod, PodState, WorkerReport
from kubemap_operator.tasks.planner import plan

N = 1_000_000
LIMIT = 64 * 1024
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def realistic_spec() -> dict[str, Any]:
    return MapTaskSpec.model_validate(
        {
            "mode": "Function",
            "count": N,
            "parallelism": 10_000,
            "itemsPerPod": 1,
            "backoffLimitPerIndex": 3,
            "minSuccessRatio": 0.5,
            "activeDeadlineSeconds": 86400,
            "ttlSecondsAfterFinished": 3600,
            "store": {
                "url": "s3://a-bucket-with-a-long-name/some/prefix/for/tasks",
                "endpoint": "https://s3.example.com",
                "secretName": "kubemap-s3",
            },
            "template": {
                "image": "ghcr.io/kubemap/kubemap:0.1.0",
                "env": [{"name": f"VAR_{i}", "value": "x" * 40} for i in range(20)],
                "resources": {
                    "requests": {"cpu": "500m", "memory": "512Mi"},
                    "limits": {"memory": "1Gi"},
                },
            },
        }
    ).to_wire()


def whole_object(status: MapTaskStatus) -> bytes:
    obj = {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {
            "name": "m" * 63,
            "namespace": "n" * 63,
            "uid": "0" * 36,
            "resourceVersion": "9" * 12,
            "generation": 12,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "finalizers": ["kubemap.io/operator"],
            "labels": {"app": "x" * 63},
            # managedFields list field paths, not values: a generous allowance.
            "managedFields": [
                {
                    "manager": "kubemap-operator",
                    "operation": "Update",
                    "subresource": "status",
                    "fieldsV1": {f"f:{k}": {} for k in status.to_wire()},
                }
                for _ in range(4)
            ],
        },
        "spec": realistic_spec(),
        "status": status.to_wire(),
    }
    return json.dumps(obj).encode()


def worst_ranges(count: int, top: int) -> str:
    """`count` two-number ranges with the widest numbers below `top`: '999996-999997,...'."""
    ranges = IndexRanges.from_spans((top - 4 * i - 4, top - 4 * i - 2) for i in range(count))
    assert len(ranges.intervals) == count
    return str(ranges)


def test_worst_status_the_bounds_allow_fits() -> None:
    status = MapTaskStatus(
        phase=Phase.FAILED,
        total=N,
        succeeded=N // 2,
        failed=N // 2,
        active=10_000,
        succeeded_indexes=worst_ranges(MAX_SUCCEEDED_RANGES, N),
        failed_indexes=worst_ranges(MAX_FAILED_RANGES, N - 10 * MAX_SUCCEEDED_RANGES),
        conditions=[
            Condition(
                type=f"Type{i}",
                status="True",
                reason="R" * 128,
                message="m" * 512,
                last_transition_time="2026-01-01T00:00:00Z",
            )
            for i in range(MAX_CONDITIONS)
        ],
        start_time="2026-01-01T00:00:00Z",
        completion_time="2026-01-01T00:00:00Z",
        observed_generation=12,
        message="x" * MAX_MESSAGE_LENGTH,
    )
    size = len(whole_object(status))
    assert size < LIMIT, size


def test_planner_keeps_scattered_outcomes_bounded_at_one_million() -> None:
    rng = random.Random(7)
    spec = MapTaskSpec.model_validate(
        {**realistic_spec(), "parallelism": 3000, "backoffLimitPerIndex": 0, "minSuccessRatio": 0.0}
    )
    status = MapTaskStatus()
    pods: dict[str, ObservedPod] = {}
    now = NOW
    biggest = 0
    for _ in range(12):
        result = plan(spec, status, list(pods.values()), now)
        status = result.status
        biggest = max(biggest, len(whole_object(status)))
        for name in result.delete:
            pods.pop(name, None)
        for req in result.create:
            name = f"t-{req.start}-{req.attempt}"
            pods[name] = ObservedPod(
                name,
                req.start,
                req.count,
                req.attempt,
                req.failures,
                req.infra_failures,
                PodState.ACTIVE,
            )
        # Every other pod finishes, in random order; a third of them fail: scattered outcomes.
        for name, p in list(pods.items()):
            if p.state is PodState.ACTIVE and rng.random() < 0.5:
                failed = rng.random() < 0.33
                pods[name] = ObservedPod(
                    name,
                    p.start,
                    p.count,
                    p.attempt,
                    p.failures,
                    p.infra_failures,
                    PodState.FAILED if failed else PodState.SUCCEEDED,
                    exit_code=3 if failed else 0,
                    report=WorkerReport(
                        IndexRanges() if failed else p.span, p.span if failed else IndexRanges()
                    ),
                    finished_at=now,
                )
        now += timedelta(seconds=1)
        if status.phase.finished:
            break
    assert biggest < LIMIT
    # Scattered failures beyond what the status can hold stop the task with a clear reason.
    assert status.phase is Phase.FAILED
    assert status.conditions[-1].reason == "TooManyFailedRanges"
    assert len(IndexRanges.parse(status.failed_indexes).intervals) <= MAX_FAILED_RANGES
