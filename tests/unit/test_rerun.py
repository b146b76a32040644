"""Rerunning through the kubemap.io/retry annotation, table by table: the operator's plan
with a retry token, from observed state in to plan out (pure, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from kubemap.core.attempts import SliceRequest
from kubemap.core.ranges import IndexRanges
from kubemap.core.status import Phase
from kubemap.resources.maptask import MapTaskStatus
from kubemap_operator.tasks.planner import Limits, plan
from test_planner import NOW, bad, ok, pod, spec

LIMITS = Limits(backoff_base_seconds=0.0)


def failed(succeeded: str, failed: str, **kw: Any) -> MapTaskStatus:
    ok_n = len(IndexRanges.parse(succeeded))
    bad_n = len(IndexRanges.parse(failed))
    fields: dict[str, Any] = {"phase": Phase.FAILED, **kw}
    return MapTaskStatus(
        total=10,
        succeeded=ok_n,
        failed=bad_n,
        succeeded_indexes=succeeded,
        failed_indexes=failed,
        start_time="2026-01-01T11:00:00Z",
        completion_time="2026-01-01T11:30:00Z",
        message="stopped after index 5 failed",
        **fields,
    )


def test_new_token_reruns_exactly_the_indices_without_a_result() -> None:
    old = failed("0-4,7-9", "5")  # 6 never ran: the task stopped first
    pods = [bad(5, attempt=1, failures=1, finalizer=False)]
    result = plan(spec(backoff_limit_per_index=1), old, pods, NOW, retry_token="a", limits=LIMITS)
    status = result.status
    assert (status.phase, status.failed_indexes, status.failed) == (Phase.RUNNING, "", 0)
    assert status.succeeded_indexes == "0-4,7-9" and status.succeeded == 8
    assert (status.retry_token, status.attempt_base) == ("a", 2)
    assert status.completion_time is None and status.start_time == "2026-01-01T12:00:00Z"
    assert {c.type for c in status.conditions} == {"Retried"}
    # fresh attempts (no failures spent) numbered from the base: no pod name is reused
    assert result.create == (SliceRequest(5, 1, attempt=2), SliceRequest(6, 1, attempt=2))
    assert [e.reason for e in result.events] == ["Retrying"]


def test_a_token_is_honoured_once() -> None:
    done = failed("0-4,7-9", "5", retry_token="a", attempt_base=2)
    result = plan(spec(), done, [], NOW, retry_token="a", limits=LIMITS)
    assert result.status.phase is Phase.FAILED and not result.create and not result.events


def test_earlier_rounds_pods_are_no_part_of_the_plan() -> None:
    status = MapTaskStatus(
        phase=Phase.RUNNING,
        total=10,
        succeeded_indexes="0-4,7-9",
        start_time="2026-01-01T11:59:00Z",
        retry_token="a",
        attempt_base=2,
    )
    late_old = ok(5, attempt=0)  # a late pod of the first round finishing now
    failed_old = bad(6, attempt=1, failures=1, finalizer=True)
    new = [pod(5, attempt=2), bad(6, attempt=2, report=("", "6"))]
    result = plan(
        spec(backoff_limit_per_index=1),
        status,
        [late_old, failed_old, *new],
        NOW,
        retry_token="a",
        limits=LIMITS,
    )
    assert result.status.succeeded_indexes == "0-4,7-9"  # the late pod counts for nobody
    assert result.status.failed_indexes == ""  # 6 failed once in this round: a retry, not final
    assert result.create == (SliceRequest(6, 1, attempt=3, failures=1),)
    assert failed_old.name in result.release and late_old.name not in result.delete


def test_the_rerun_finishes_with_every_index_counted_once() -> None:
    status = MapTaskStatus(
        phase=Phase.RUNNING,
        total=10,
        succeeded_indexes="0-4,7-9",
        start_time="2026-01-01T11:59:00Z",
        retry_token="a",
        attempt_base=2,
    )
    result = plan(
        spec(),
        status,
        [ok(5, attempt=0, finalizer=False), ok(5, attempt=2), ok(6, attempt=2)],
        NOW,
        retry_token="a",
        limits=LIMITS,
    )
    assert result.status.phase is Phase.SUCCEEDED
    assert (result.status.succeeded, result.status.succeeded_indexes) == (10, "0-9")


@pytest.mark.parametrize(
    ("status", "suspend", "event", "recorded"),
    [
        (MapTaskStatus(phase=Phase.RUNNING, total=10), False, "RetryIgnored", "b"),
        (failed("0-4", "", phase=Phase.CANCELLED), True, "RetryWaiting", None),
        (failed("0-9", ""), False, "RetryNothing", "b"),
    ],
)
def test_tokens_that_rerun_nothing(
    status: MapTaskStatus, suspend: bool, event: str, recorded: str | None
) -> None:
    result = plan(spec(suspend=suspend), status, [], NOW, retry_token="b", limits=LIMITS)
    assert [e.reason for e in result.events][:1] == [event]
    assert result.status.retry_token == recorded
    assert not result.create or status.phase is Phase.RUNNING


def test_a_cancelled_task_reruns_what_never_ran() -> None:
    cancelled = failed("0-3", "", phase=Phase.CANCELLED)
    result = plan(spec(parallelism=10), cancelled, [], NOW, retry_token="c", limits=LIMITS)
    assert [r.start for r in result.create] == [4, 5, 6, 7, 8, 9]
    assert all(r.attempt == 0 for r in result.create)  # no pods before: the base stays 0
