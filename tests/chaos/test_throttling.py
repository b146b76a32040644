"""HTTP 429 with Retry-After on pod creation: the operator waits as told, with no hot loop.

The operator runs as a host process (the chart's command, environment and ServiceAccount)
behind a loopback proxy that refuses every pod create for a while; the chart's Deployment is
scaled to 0 meanwhile and back to 1 afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import kubemap
import pytest
from chaoskit import PodLedger, check_outcome, get_task, opts, report, wait_finished
from faults import (
    LiveCluster,
    LocalOperator,
    operator_launch,
    scale_operator,
    serviceaccount_kubeconfig,
)
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.reconcile import CREATE_CONCURRENCY
from kubernetes import client
from throttle_proxy import ThrottlingProxy

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

RETRY_AFTER = 2
WINDOW = 8.0


@pytest.fixture
def throttled_operator(
    cluster: LiveCluster, core: client.CoreV1Api, api: client.ApiClient, tmp_path: Path
) -> Iterator[ThrottlingProxy]:
    apps = client.AppsV1Api(api)
    launch, account = operator_launch(core)
    scale_operator(apps, core, 0)
    try:
        with ThrottlingProxy(
            cluster.state.apiserver_url, str(cluster.dir / "pki" / "ca.crt"), RETRY_AFTER
        ) as proxy:
            kubeconfig = serviceaccount_kubeconfig(
                core, account, proxy.url, tmp_path / "operator.kubeconfig"
            )
            with LocalOperator(launch, kubeconfig, tmp_path / "operator.log"):
                yield proxy
    finally:
        scale_operator(apps, core, 1)


@pytest.mark.timeout(300)
def test_429_retry_after_on_pod_create_is_honoured(
    throttled_operator: ThrottlingProxy,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
) -> None:
    proxy = throttled_operator

    def quick(x: int) -> int:
        return x + 1

    name = unique("throttled")
    with PodLedger(core, name) as ledger:
        proxy.throttle(WINDOW)
        started = time.monotonic()
        run = kubemap.submit(quick, range(20), **opts(name=name, parallelism=10))
        rates: list[float] = []  # status.podCreateRate while throttled (AIMD: below the QPS)
        while time.monotonic() < started + WINDOW + 2 * RETRY_AFTER:
            rate = (get_task(custom, name).get("status") or {}).get("podCreateRate")
            if rate is not None:
                rates.append(rate)
            time.sleep(0.2)
        wait_finished(custom, name, 240)
        verdict = check_outcome(core, custom, name, 20, ledger)
    assert run.results() == list(range(1, 21))
    refused = [c for c in proxy.creates if c.status == 429]
    accepted = [c for c in proxy.creates if c.status == 201]
    assert refused, "no pod create reached the proxy while it was throttling"
    qps = Settings.from_env().pod_create_qps
    assert rates and max(rates) < qps, (rates, qps)  # the status showed the lowered rate
    # A hot loop would send hundreds of creates in the window; honouring Retry-After allows one
    # round of concurrent creates per Retry-After period.
    rounds = int((time.monotonic() - started) // RETRY_AFTER) + 1
    assert len(refused) <= (WINDOW / RETRY_AFTER + 1) * CREATE_CONCURRENCY, len(refused)
    assert len(refused) <= rounds * CREATE_CONCURRENCY
    # No create was sent inside a Retry-After period that an earlier refusal had announced
    # (creates already in flight when the 429 came back are the only ones allowed).
    early = [
        c
        for c in proxy.creates
        if any(r.sent + 0.3 < c.sent < r.sent + RETRY_AFTER - 0.3 for r in refused)
    ]
    assert not early, f"{len(early)} creates sent before Retry-After had passed"
    report(
        f"{verdict.line()}; {len(refused)} creates refused with 429 in {WINDOW:g} s "
        f"(Retry-After {RETRY_AFTER} s), {len(accepted)} accepted, none early; "
        f"status.podCreateRate fell to {min(rates):g}/s (QPS {qps:g})"
    )
