"""S3 answering `503 SlowDown` to 30 % of requests for a minute, in pod mode and on a warm
pool: the task succeeds
with every result once and no retry spent, and the request rate the pods send falls during
the throttle and recovers after it (the AIMD limiter in kubemap.stores.s3).

The pods reach SeaweedFS through a loopback front (tests/tools/s3_throttle_proxy.py), named
as the task's store endpoint (pod mode) or in the pool's environment (warm pool); the SDK and
the operator keep the direct endpoint. Each item reads and writes small objects in a scratch
prefix of the store until the test drops a stop object, so the workers keep sending for the
whole scenario; the front counts requests per second.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import kubemap
import pytest
from chaoskit import NAMESPACE, PodLedger, check_outcome, opts, report, wait_finished
from faults import wait_until
from kubemap.api.workerpool import WorkerPool
from kubemap.stores import open_store
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from s3_throttle_proxy import S3ThrottleProxy

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

PODS = 4
BEFORE = 8  # seconds of unthrottled traffic measured first
WINDOW = 60  # the minute of 503 SlowDown to 30 % of requests
AFTER = 20  # seconds measured once the throttle is over
SHARE = 0.3


@pytest.fixture
def s3_front() -> Iterator[S3ThrottleProxy]:
    with S3ThrottleProxy(os.environ["AWS_ENDPOINT_URL_S3"]) as proxy:
        yield proxy


def _mean(counts: dict[int, int], first: int, last: int) -> float:
    """Requests per second over whole seconds [first, last)."""
    seconds = range(first, last)
    return sum(counts.get(s, 0) for s in seconds) / max(1, len(seconds))


def _wait(what: str, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(params=["pods", "pool"])
def placement(
    request: pytest.FixtureRequest, s3_front: S3ThrottleProxy, unique: Callable[[str], str]
) -> Iterator[dict[str, str]]:
    """The submit options that send the workers' S3 traffic through the front."""
    if request.param == "pods":
        yield {"store_endpoint": s3_front.url}
        return
    pool = WorkerPool(
        unique("s3pool"),
        namespace=NAMESPACE,
        replicas=PODS,
        idle_ttl_seconds=0,
        env={"AWS_ENDPOINT_URL_S3": s3_front.url},
    )
    pool.create()
    try:
        wait_until(f"{PODS} pool workers ready", lambda: pool.status().ready == PODS, 120)
        yield {"pool": pool.name}
    finally:
        pool.delete()


@pytest.mark.timeout(600)
def test_s3_slowdown_is_waited_out_and_the_rate_adapts(
    s3_front: S3ThrottleProxy,
    placement: dict[str, str],
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
) -> None:
    proxy = s3_front
    name = unique("s3-slowdown")
    scratch = f"{os.environ['KUBEMAP_STORE'].rstrip('/')}/{name}-probe"

    def busy(i: int) -> int:
        """Small reads and writes in the scratch prefix until the stop object appears."""
        from kubemap.stores import open_store

        store = open_store(scratch)
        sent = 0
        while not store.exists("stop"):
            store.put(f"item-{i}", b"x" * 64)
            store.get(f"item-{i}")
            sent += 3
        return sent

    with PodLedger(core, name) as ledger:
        run = kubemap.submit(busy, range(PODS), **opts(name=name, parallelism=PODS, **placement))
        # Every pod sends: a second in which the front sees steady traffic from all of them.
        _wait("the pods' traffic", lambda: sum(proxy.per_second().values()) > 200, 240)
        time.sleep(BEFORE + 1)
        proxy.throttle(WINDOW, SHARE)
        time.sleep(WINDOW + AFTER + 1)
        open_store(scratch).put("stop", b"")
        wait_finished(custom, name, 240)
        verdict = check_outcome(core, custom, name, PODS, ledger)
        open_store(scratch).delete_prefix()
    sent = run.results()
    assert len(sent) == PODS and all(n > 0 for n in sent), sent
    assert verdict.retries == 0, "a throttle spent a retry"
    status = custom.get_namespaced_custom_object(
        "kubemap.io", "v1alpha1", opts()["namespace"], "maptasks", name
    )["status"]
    assert status.get("retries", 0) == 0, status

    assert proxy.window is not None
    start, end = proxy.window
    counts = proxy.per_second()
    before = _mean(counts, start - BEFORE, start)
    # The first seconds of the window are the limiter finding the rate: measure after them.
    during = _mean(counts, start + 10, end)
    after = _mean(counts, end + AFTER // 2, end + AFTER)
    refused = proxy.refused()
    report(
        f"{verdict.line()}; S3 front: {before:.0f} req/s before, {during:.0f} req/s while "
        f"refusing {SHARE:.0%} with 503 SlowDown for {WINDOW} s ({refused} refused), "
        f"{after:.0f} req/s after"
    )
    assert refused > 0
    assert during < before / 2, (before, during, after)  # slowed down, multiplicatively
    assert after > 2 * during, (before, during, after)  # and recovered
