"""The bounds that keep a MapTask's status small, and helpers to write it.

Why the bounds hold: `succeededIndexes` and `failedIndexes` are compressed ranges. Ranges
only fragment where indices are not done yet (running pods, pods waiting for a retry) or
where failures are scattered. The planner therefore
  * records a success only while `succeededIndexes` stays within MAX_SUCCEEDED_RANGES
    ranges; otherwise the finished pod stays (with its finalizer) as the record of that
    success until its neighbours finish and the ranges merge again;
  * fails the task when final failures would need more than MAX_FAILED_RANGES separate
    ranges: such scattered failures cannot be tracked in a bounded object (the worker's
    error records in the task's store still hold every one of them).
At 1,000,000 items a range is at most "999998-999999," (14 characters), so both fields
together stay under 3000 * 14 = 42,000 characters: see tests/unit/test_status_bound.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pydantic
from kubemap.core.plan import MAX_FAILED_RANGES, MAX_SUCCEEDED_RANGES
from kubemap.core.ranges import describe, within
from kubemap.resources.maptask import Condition, MapTaskStatus

MAX_MESSAGE_LENGTH = 1024
MAX_CONDITIONS = 8


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def clip(text: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def set_condition(
    conditions: list[Condition], kind: str, *, reason: str, message: str, now: datetime
) -> list[Condition]:
    """Replace (or add) the condition of this type; keep the transition time if unchanged."""
    out: list[Condition] = []
    previous: Condition | None = None
    for cond in conditions:
        if cond.type == kind:
            previous = cond
        else:
            out.append(cond)
    when = rfc3339(now)
    if previous is not None and previous.status == "True" and previous.last_transition_time:
        when = previous.last_transition_time
    out.append(
        Condition(
            type=kind,
            status="True",
            reason=reason,
            message=clip(message, 512),
            last_transition_time=when,
        )
    )
    return out[-MAX_CONDITIONS:]


__all__ = [
    "MAX_CONDITIONS",
    "MAX_FAILED_RANGES",
    "MAX_MESSAGE_LENGTH",
    "MAX_SUCCEEDED_RANGES",
    "clip",
    "describe",
    "rfc3339",
    "set_condition",
    "within",
]


def status_wire(status: MapTaskStatus) -> dict[str, Any]:
    """The status as a merge patch: fields that became None are removed explicitly."""
    data = status.model_dump(by_alias=True, mode="json")
    data["conditions"] = [c.to_wire() for c in status.conditions]
    return data


def invalid_spec_message(exc: pydantic.ValidationError) -> str:
    """'invalid spec: spec.template.image: ...': the first error, with the field's path as
    written in the MapTask (camelCase), so a YAML user finds it."""
    first = exc.errors()[0]
    path = ".".join(["spec", *(str(part) for part in first.get("loc") or ())])
    reason = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid spec: {path}: {reason}{more}; fix the MapTask and apply it again"
