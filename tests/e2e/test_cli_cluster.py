"""`kubemap get/list/results/logs/cancel` against a real API server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import kubemap
import pytest
from click.testing import CliRunner
from e2ekit import NAMESPACE, Operator
from kubemap.cli import main

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("kubemap_installed"),
]


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [*args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_get_list_results_logs_cancel(operator: Operator, unique: Callable[[str], str]) -> None:
    def half(x: int) -> float:
        if x == 3:
            raise ArithmeticError("three is not welcome")
        return x / 2

    store = os.environ["KUBEMAP_STORE"]
    name = unique("cli")
    run = kubemap.submit(
        half,
        range(5),
        backend="kubernetes",
        namespace=NAMESPACE,
        store=store,
        name=name,
        min_success_ratio=0.5,
    )
    run.wait(timeout=120)

    code, out, _ = cli("get", name, "-n", NAMESPACE)
    assert (
        code == 0
        and "phase:       Succeeded" in out
        and "4/5 succeeded, 1 failed, 0 not run" in out  # the same three counts everywhere
        and "failed:      3" in out
        and "reason:      Completed" in out
    )

    code, out, _ = cli("list", "-n", NAMESPACE)
    row = next(line for line in out.splitlines() if line.startswith(name))
    assert row.split()[1:6] == ["Function", "Succeeded", "4/5", "1", "0"]  # ..., FAILED, NOT-RUN

    code, out, err = cli("results", name, "-n", NAMESPACE)
    assert code == 1  # an index failed
    assert [json.loads(line) for line in out.splitlines()] == [0.0, 0.5, 1.0, None, 2.0]
    assert "index 3: ArithmeticError: three is not welcome" in err and "Traceback" not in err
    code, _, err = cli("results", name, "-n", NAMESPACE, "--verbose")
    assert code == 1 and "Traceback" in err

    code, out, err = cli("logs", name, "--index", "3", "-n", NAMESPACE)
    assert f"==> {name}-3-0 (index 3, attempt 0) <==" in out  # the failed pod is kept
    # The node emulator serves no logs: that is an error, not an empty log (kind serves them).
    assert code == 0 or (code == 1 and "cannot read the logs of pod" in err)

    code, _, err = cli("get", "no-such-task", "-n", NAMESPACE)
    assert code == 1 and "no MapTask 'no-such-task'" in err

    def slow(x: int) -> int:
        time.sleep(60)
        return x

    other = unique("cli-cancel")
    run = kubemap.submit(
        slow, range(3), backend="kubernetes", namespace=NAMESPACE, store=store, name=other
    )
    code, out, _ = cli("cancel", other, "-n", NAMESPACE)
    assert code == 0 and f"maptask {other} cancelled" in out
    assert run.wait(timeout=60).phase.value == "Cancelled"
