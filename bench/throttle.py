"""A map whose items read and write S3, with S3 answering `503 SlowDown` to 30 % of requests,
against the same map unthrottled, measured in one run: the completion-time ratio.

    eval "$(tests/cluster/testcluster env)"   # an S3 endpoint and credentials (SeaweedFS)
    python bench/throttle.py            # 200 items x 12 requests, 4 processes
    python bench/throttle.py --quick    # 40 items, for a smoke test

Local backend (worker processes on this machine) with its store on the S3 endpoint of the
environment (the test cluster's SeaweedFS), reached through a loopback front
(tests/tools/s3_throttle_proxy.py) that refuses a share of requests with 503 SlowDown for the
whole throttled run. Every request of the run goes through the front: kubemap's own (inputs,
results) and the items' (each item puts and gets small objects through kubemap.stores). The
stores' AIMD limiter slows down on the throttle and spends no retry on it, so the throttled
run ends with every result, slower by the printed ratio. bench/tail.py calls `measure()`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import kubemap
from kubemap.stores import open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "tools"))
from s3_throttle_proxy import S3ThrottleProxy

REQUESTS_PER_ITEM = 12  # 6 puts and 6 gets of a 1 KiB object


def store_item(job: tuple[str, int]) -> int:
    """Six small writes and reads in the run's scratch prefix (S3 traffic of a real map)."""
    url, i = job
    scratch = open_store(url)
    for n in range(REQUESTS_PER_ITEM // 2):
        scratch.put(f"{i}-{n}", b"x" * 1024)
        scratch.get(f"{i}-{n}")
    return i


@dataclass(frozen=True)
class ThrottleFigures:
    items: int
    share: float
    unthrottled: float  # seconds
    throttled: float  # seconds
    refused: int  # requests answered 503 SlowDown
    requests: int  # requests that reached the front in the throttled run

    @property
    def ratio(self) -> float:
        return self.throttled / self.unthrottled

    def line(self) -> str:
        return (
            f"S3 throttled ({self.share:.0%} of requests 503 SlowDown): {self.items} items in "
            f"{self.throttled:.1f} s vs {self.unthrottled:.1f} s unthrottled: "
            f"{self.ratio:.2f}x ({self.refused} of {self.requests} requests refused, "
            "every result back, no retry spent)"
        )


def _timed_run(items: int, parallelism: int, store: str) -> float:
    scratch = f"{store.rstrip('/')}/bench-scratch-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    results = kubemap.map(
        store_item,
        [(scratch, i) for i in range(items)],
        backend="local",
        store=store,
        parallelism=parallelism,
    )
    elapsed = time.perf_counter() - started
    assert results == list(range(items)), "a result is missing or wrong"
    open_store(scratch).delete_prefix()
    return elapsed


def measure(
    items: int = 200, parallelism: int = 4, share: float = 0.3, store: str | None = None
) -> ThrottleFigures:
    """Both runs through the front, unthrottled first; the environment's AWS settings name
    the S3 endpoint. The endpoint variable is restored afterwards."""
    store = store or os.environ.get("KUBEMAP_STORE") or ""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3")
    if not store.startswith("s3://") or not endpoint:
        raise SystemExit(
            "bench/throttle.py needs an S3 store: KUBEMAP_STORE=s3://... and "
            'AWS_ENDPOINT_URL_S3 (e.g. eval "$(tests/cluster/testcluster env)")'
        )
    with S3ThrottleProxy(endpoint) as proxy:
        os.environ["AWS_ENDPOINT_URL_S3"] = proxy.url
        try:
            _timed_run(min(items, 8), parallelism, store)  # imports, first pool, connections
            unthrottled = _timed_run(items, parallelism, store)
            first = len(proxy.requests)
            proxy.throttle(24 * 3600, share)
            throttled = _timed_run(items, parallelism, store)
            proxy.throttle(0)
            requests = len(proxy.requests) - first
        finally:
            os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
        return ThrottleFigures(items, share, unthrottled, throttled, proxy.refused(), requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 items instead of 200")
    parser.add_argument("--share", type=float, default=0.3, help="share refused (0.3)")
    args = parser.parse_args()
    figures = measure(items=40 if args.quick else 200, share=args.share)
    print(figures.line())


if __name__ == "__main__":
    main()
