"""One tally for one task (issue 18, item 16): every surface a user reads counts the same
succeeded, failed and not-run indices, and they always add up to the total.

The issue's pod-mode scenario: 20 items, 3 of them always fail, --retries 1; run once with
failures tolerated (min_success_ratio 0.5) and once with the fail-fast default. Pool mode:
the same on a warm pool. The surfaces: MapRun.status(), MapTaskError, run.failures() and
run.not_run(), `kubemap get`, `kubectl get mt -o json`, `kubemap results --partial` (its
non-null lines and its stderr counts) and the result objects in S3.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubemap
import pytest
from click.testing import CliRunner
from e2ekit import NAMESPACE, kubectl, opts
from kubemap.cli.main import main
from kubemap.core.status import Phase
from kubemap.stores import open_store
from kubemap.task.results import succeeded_indexes
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("kubemap_installed", "operator"),
]

TOTAL = 20
FAILING = {3, 8, 14}
S3_SECRET = "kubemap-s3"

Tally = tuple[int, int, int]  # succeeded, failed, not run


def fails_on_three(x: int) -> int:
    if x in FAILING:
        raise ValueError(f"bad input {x}")
    return x * x


@pytest.fixture
def own_namespace(core: client.CoreV1Api, unique: Callable[[str], str]) -> Iterator[str]:
    """A namespace of this test's own, with a copy of the test namespace's S3 Secret."""
    name = unique("tally")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    secret = core.read_namespaced_secret(S3_SECRET, NAMESPACE)
    core.create_namespaced_secret(
        name,
        client.V1Secret(metadata=client.V1ObjectMeta(name=S3_SECRET), data=secret.data),
    )
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [*args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def counts_in(text: str) -> Tally:
    """The '12 succeeded, 1 failed, 7 not run' of a message ('12/20 succeeded' too)."""
    found = re.search(r"(\d+)(?:/\d+)? succeeded, (\d+) failed, (\d+) not run", text)
    assert found, f"no counts in: {text!r}"
    return int(found[1]), int(found[2]), int(found[3])


def every_tally(run: kubemap.MapRun, namespace: str) -> dict[str, Tally]:
    """What each surface says of the finished run `run`."""
    total = run.total
    seen: dict[str, Tally] = {}
    status = run.status()
    seen["MapRun.status()"] = (status.succeeded, status.failed, status.not_run)
    failures, not_run = run.failures(), run.not_run()
    seen["run.failures()/not_run()"] = (
        total - len(failures) - len(not_run),
        len(failures),
        len(not_run),
    )
    try:
        run.results()
    except kubemap.MapTaskError as exc:
        seen["MapTaskError"] = (exc.succeeded, len(exc.failures), len(exc.not_run))
        seen["MapTaskError message"] = counts_in(str(exc))
    code, out, err = cli("get", run.name, "--namespace", namespace)
    assert code == 0, err
    seen["kubemap get"] = counts_in(out)
    shown = subprocess.run(
        [kubectl(), "get", "mt", run.name, "-n", namespace, "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
    )
    record = json.loads(shown.stdout)["status"]
    seen["kubectl get mt"] = (record["succeeded"], record["failed"], record["notRun"])
    code, out, err = cli("results", run.name, "--namespace", namespace, "--partial")
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(lines) == total, out
    non_null = sum(1 for value in lines if value is not None)
    tolerated = re.search(r"(\d+) of \d+ inputs failed", err)
    if tolerated:  # a run that succeeded while tolerating failures: a warning, no not-run
        failed = int(tolerated[1])
        seen["kubemap results (lines)"] = (non_null, failed, total - non_null - failed)
    elif err.strip():
        said = counts_in(err)
        seen["kubemap results (stderr)"] = said
        seen["kubemap results (lines)"] = (non_null, said[1], said[2])
    else:
        seen["kubemap results (lines)"] = (non_null, 0, total - non_null)
    in_s3 = len(succeeded_indexes(open_store(run.store_url)))
    seen["S3 result objects"] = (in_s3, seen["kubectl get mt"][1], seen["kubectl get mt"][2])
    return seen


def assert_one_tally(seen: dict[str, Tally], total: int) -> Tally:
    distinct = set(seen.values())
    assert len(distinct) == 1, "the surfaces disagree:\n" + "\n".join(
        f"  {where:28} {s} succeeded, {f} failed, {n} not run" for where, (s, f, n) in seen.items()
    )
    (tally,) = distinct
    assert sum(tally) == total, tally
    return tally


def follow(run: kubemap.MapRun, timeout: float = 300) -> list[str]:
    """Wait for the run, checking on each look that the counts add up to the total."""
    broken: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run.status()
        parts = status.succeeded + status.failed + status.not_run + status.active
        if parts != status.total:
            broken.append(f"{status.phase.value}: {status.counts()} of {status.total}")
        if status.finished:
            return broken
        time.sleep(0.5)
    raise AssertionError(f"task {run.name} did not finish within {timeout}s")


@pytest.mark.parametrize(
    "ratio", [pytest.param(0.5, id="failures-tolerated"), pytest.param(1.0, id="fail-fast")]
)
def test_pod_mode_every_surface_counts_the_same(
    own_namespace: str, unique: Callable[[str], str], ratio: float
) -> None:
    run = kubemap.submit(
        fails_on_three,
        range(TOTAL),
        **opts(
            name=unique("tally"),
            namespace=own_namespace,
            retries=1,
            min_success_ratio=ratio,
            parallelism=10,
        ),
    )
    broken = follow(run)
    assert not broken, broken
    seen = every_tally(run, own_namespace)
    succeeded, failed, not_run = assert_one_tally(seen, TOTAL)
    # the three always-failing inputs never succeed; every other input either has its result
    # or, after a fail-fast stop, is counted as not run
    assert failed + not_run >= len(FAILING) and succeeded <= TOTAL - len(FAILING)
    if ratio < 1.0:
        assert run.status().phase is Phase.SUCCEEDED
        assert (succeeded, failed, not_run) == (TOTAL - len(FAILING), len(FAILING), 0)
    else:
        assert run.status().phase is Phase.FAILED and failed >= 1
    print(f"\n{run.name} (min_success_ratio={ratio:g}): {seen['MapRun.status()']}")


@pytest.mark.parametrize(
    "ratio", [pytest.param(0.5, id="failures-tolerated"), pytest.param(1.0, id="fail-fast")]
)
def test_pool_mode_every_surface_counts_the_same(
    pool: Callable[..., Any], unique: Callable[[str], str], ratio: float
) -> None:
    wp = pool(replicas=2)
    run = kubemap.submit(
        fails_on_three,
        range(TOTAL),
        **opts(name=unique("ptally"), pool=wp.name, retries=1, min_success_ratio=ratio),
    )
    broken = follow(run)
    assert not broken, broken
    seen = every_tally(run, NAMESPACE)
    succeeded, failed, not_run = assert_one_tally(seen, TOTAL)
    assert failed + not_run >= len(FAILING) and succeeded <= TOTAL - len(FAILING)
    # attempts are named by index and attempt (counted from 1), not like pod names ("17-0")
    message = run.status().message or ""
    assert not re.search(r"\(\d+-\d+[,)]|\b\d+-\d+ exited", message), message
    for error in run.failures().values():
        assert not re.search(r"\b\d+-\d+ exited", error.message), error.message
    print(f"\n{run.name} on pool (min_success_ratio={ratio:g}): {seen['MapRun.status()']}")


def slow_and_fails_on_twelve(x: int) -> int:
    time.sleep(0.2 + (x % 7) * 0.15)
    if x == 12:
        raise ValueError("bad input 12")
    return x


def test_a_fail_fast_stop_counts_the_results_pods_wrote_while_it_stopped(
    own_namespace: str, unique: Callable[[str], str]
) -> None:
    """Index 12 fails while 11 other pods run. The operator concluded at once and deleted
    them: the status said 12 succeeded while 22 results were in S3 (4 runs of 4). It now
    stops them first and counts what they finished."""
    run = kubemap.submit(
        slow_and_fails_on_twelve,
        range(60),
        **opts(name=unique("stop"), namespace=own_namespace, parallelism=12, items_per_pod=1),
    )
    broken = follow(run)
    assert not broken, broken
    time.sleep(3)  # anything still writing would show in S3 by now
    seen = every_tally(run, own_namespace)
    succeeded, failed, not_run = assert_one_tally(seen, 60)
    assert failed == 1 and succeeded >= 12 and not_run == 59 - succeeded, seen
    print(f"\n{run.name}: {seen['MapRun.status()']}")
