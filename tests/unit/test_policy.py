"""The failure policy shared by the local backend and the operator."""

from __future__ import annotations

import pytest
from kubemap.contract import EXIT_INFRA_ERROR, EXIT_OK, EXIT_USAGE_ERROR, EXIT_USER_ERROR
from kubemap.core.policy import (
    BACKOFF_MAX_SECONDS,
    FailureBudget,
    classify_exit,
    retry_delay,
)


@pytest.mark.parametrize(
    ("total", "ratio", "max_failed", "allowed"),
    [
        (10, 1.0, None, 0),
        (10, 0.95, None, 0),  # 9.5 successes needed -> 10
        (10, 0.9, None, 1),
        (10, 0.0, None, 10),
        (100, 0.95, None, 5),
        (100, 0.95, 2, 2),  # the tighter bound wins
        (100, 0.5, 80, 50),
        (0, 0.5, None, 0),
        (3, 1 / 3, None, 2),  # float noise must not cost a success
        (1_000_000, 0.999, None, 1000),
    ],
)
def test_failure_budget(total: int, ratio: float, max_failed: int | None, allowed: int) -> None:
    budget = FailureBudget.of(total, min_success_ratio=ratio, max_failed_indexes=max_failed)
    assert budget.allowed == allowed
    assert not budget.exceeded(allowed)
    assert budget.exceeded(allowed + 1)


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (-1, 0.0), (1, 10.0), (2, 20.0), (3, 40.0), (6, 320.0), (7, 360.0), (50, 360.0)],
)
def test_retry_delay_is_exponential_and_capped(failures: int, delay: float) -> None:
    assert retry_delay(failures) == delay
    assert retry_delay(failures) <= BACKOFF_MAX_SECONDS


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (EXIT_OK, "ok"),
        (EXIT_USER_ERROR, "user"),
        (EXIT_INFRA_ERROR, "infra"),
        (EXIT_USAGE_ERROR, "usage"),
        (None, "infra"),  # killed or lost: not the user's fault
        (1, "user"),  # an uncaught crash in container mode
        (137, "user"),  # OOM kill of the user's process
    ],
)
def test_classify_exit(code: int | None, kind: str) -> None:
    assert classify_exit(code) == kind


def test_exit_codes_are_distinct() -> None:
    assert len({EXIT_OK, EXIT_USER_ERROR, EXIT_INFRA_ERROR, EXIT_USAGE_ERROR}) == 4
