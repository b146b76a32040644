"""The pydantic models at the edges: what a MapTask spec and the SDK options accept."""

from __future__ import annotations

from typing import Any

import pytest
from kubemap.resources.maptask import (
    MAX_INLINE_ITEMS,
    MapTaskSpec,
    MapTaskStatus,
    Mode,
    Phase,
    PodTemplate,
)
from kubemap.resources.options import RunOptions
from pydantic import ValidationError

IMAGE = {"template": {"image": "busybox"}}
STORE = {"store": {"url": "s3://bucket/prefix"}}


@pytest.mark.parametrize(
    ("spec", "total"),
    [
        ({"count": 3, **IMAGE}, 3),
        ({"count": 0, **IMAGE}, 0),
        ({"items": ["a", "b"], **IMAGE}, 2),
        ({"items": ["a", "b"], "count": 2, **IMAGE}, 2),
        ({"mode": "Function", "count": 5, **STORE}, 5),
        (
            {
                "mode": "Container",
                "count": 10,
                "itemsPerPod": 3,
                "parallelism": 2,
                "backoffLimitPerIndex": 2,
                "maxFailedIndexes": 1,
                "minSuccessRatio": 0.9,
                "activeDeadlineSeconds": 60,
                "ttlSecondsAfterFinished": 0,
                "suspend": True,
                "template": {
                    "image": "busybox",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", "echo $KUBEMAP_ITEM"],
                    "env": [{"name": "A", "value": "1"}],
                    "resources": {"limits": {"cpu": "100m"}},
                    "nodeSelector": {"disk": "ssd"},
                    "serviceAccountName": "runner",
                },
            },
            10,
        ),
    ],
)
def test_valid_specs(spec: dict[str, Any], total: int) -> None:
    parsed = MapTaskSpec.model_validate(spec)
    assert parsed.total == total
    # the wire form round-trips, camelCase on the wire
    assert MapTaskSpec.model_validate(parsed.to_wire()) == parsed
    assert all("_" not in key for key in parsed.to_wire())


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({**IMAGE}, "give count"),
        ({"count": 3}, "container mode needs template.image"),
        ({"mode": "Function", "count": 3}, "function mode needs store.url"),
        ({"mode": "Function", "items": ["a"], **STORE}, "items is for container mode"),
        ({"items": ["a", "b"], "count": 3, **IMAGE}, "differs from len(items)"),
        ({"count": -1, **IMAGE}, "greater than or equal to 0"),
        ({"count": 3, "parallelism": 0, **IMAGE}, "parallelism"),
        ({"count": 3, "itemsPerPod": 0, **IMAGE}, "itemsPerPod"),
        ({"count": 3, "minSuccessRatio": 1.5, **IMAGE}, "minSuccessRatio"),
        ({"count": 3, "backoffLimitPerIndex": 101, **IMAGE}, "backoffLimitPerIndex"),
        ({"count": 3, "mode": "Batch", **IMAGE}, "mode"),
        ({"count": 3, "paralelism": 4, **IMAGE}, "paralelism"),  # a typo is an error
        ({"count": 3, "template": {"image": "x", "imagePullPolicy": "Sometimes"}}, "Always"),
        ({"items": ["x"] * (MAX_INLINE_ITEMS + 1), **IMAGE}, "items"),
        ({"mode": "Function", "count": 1, "store": {"url": ""}}, "url"),
    ],
)
def test_invalid_specs(spec: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError) as caught:
        MapTaskSpec.model_validate(spec)
    assert complaint in str(caught.value)


def test_spec_is_frozen_and_snake_case_in_python() -> None:
    spec = MapTaskSpec(
        mode=Mode.CONTAINER, count=2, items_per_pod=2, template=PodTemplate(image="x")
    )
    assert spec.items_per_pod == 2
    assert spec.to_wire()["itemsPerPod"] == 2
    with pytest.raises(ValidationError):
        spec.count = 3


def test_status_ignores_unknown_fields_and_defaults() -> None:
    status = MapTaskStatus.model_validate(
        {"phase": "Running", "succeededIndexes": "0-3", "somethingNew": 1}
    )
    assert status.phase is Phase.RUNNING and status.succeeded_indexes == "0-3"
    assert status.to_wire()["succeededIndexes"] == "0-3"
    assert MapTaskStatus().phase is Phase.PENDING


@pytest.mark.parametrize(
    ("phase", "finished"),
    [
        (Phase.PENDING, False),
        (Phase.RUNNING, False),
        (Phase.SUCCEEDED, True),
        (Phase.FAILED, True),
        (Phase.CANCELLED, True),
    ],
)
def test_phase_finished(phase: Phase, finished: bool) -> None:
    assert phase.finished is finished


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"parallelism": 4, "items_per_pod": 10, "retries": 2, "min_success_ratio": 0.5},
        {"backend": "kubernetes", "image": "repo/img:1", "namespace": "jobs"},
        {"timeout": 0.5, "store": "s3://b/p", "name": "my-run-1"},
    ],
)
def test_valid_run_options(options: dict[str, Any]) -> None:
    assert RunOptions(**options).model_dump(exclude_unset=True) == options


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"parallelism": 0}, "parallelism"),
        ({"items_per_pod": 0}, "items_per_pod"),
        ({"retries": -1}, "retries"),
        ({"min_success_ratio": 2}, "min_success_ratio"),
        ({"timeout": 0}, "timeout"),
        ({"backend": "ray"}, "backend"),
        ({"name": "Bad_Name"}, "name"),
        ({"name": "x" * 41}, "name"),
        ({"paralelism": 2}, "paralelism"),
    ],
)
def test_invalid_run_options(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RunOptions(**options)
    assert field in str(caught.value)
