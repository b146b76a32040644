"""The tail and the throttle (issue 23), in one run: what a straggler and a throttled store
cost, as ratios to the same task undisturbed.

    eval "$(tests/cluster/testcluster env)"      # or any KUBECONFIG with kubemap installed
    .venv/bin/python bench/tail.py [--items 2000] [--workers 8] [--item-ms 20] [--pods]

Straggler part: one worker of a warm pool runs every item 10x slower (a slow node, a noisy
neighbour) while the task runs on the pool:
  no straggler        the same task, every worker at full speed (the baseline)
  with speculation    one worker slow, speculation on (the default): backup copies
  without             one worker slow, speculation=False
Targets: with speculation at most 1.3x the baseline, without at least 2x. --pods adds the
same in pod mode (64 items of 1 s, 4 per pod, 8 pods at once: each pod is a process start).

The slow worker is chosen by the function: the first worker process to run an item claims
an object in the store (write-once, so exactly one wins) and sleeps 10x as long per item
from then on. Needs nothing of the cluster but the store's S3 credentials in the workers.

Throttle part: bench/throttle.py's `measure` (S3 through a front answering 503 SlowDown).
Read the ratios, not the seconds (2 shared cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubemap
from kubemap.api.workerpool import WorkerPool
from kubernetes import client, config
from throttle import measure as measure_throttle  # bench/throttle.py, beside this script

NAMESPACE = os.environ.get("BENCH_NAMESPACE", "default")
SLOWDOWN = 10
WITH_TARGET, WITHOUT_TARGET = 1.3, 2.0


@dataclass
class Run:
    label: str
    seconds: float
    status: dict[str, Any]


def opts(**kw: Any) -> dict[str, Any]:
    return {
        "backend": "kubernetes",
        "namespace": NAMESPACE,
        "store": os.environ.get("KUBEMAP_STORE"),
        **kw,
    }


def straggling(claim_url: str | None, item_seconds: float) -> Callable[[int], int]:
    """x -> x; SLOWDOWN times slower in the one process that claims `claim_url` first."""
    mine: dict[str, bool] = {}  # per process: the function is unpickled once in each worker

    def work(x: int) -> int:
        if claim_url is not None and "slow" not in mine:
            from kubemap.stores import open_store

            base, _, key = claim_url.rpartition("/")
            store = open_store(base)
            me = f"{os.uname().nodename}:{os.getpid()}".encode()
            store.put_if_absent(key, me)
            mine["slow"] = store.get(key) == me
        time.sleep(item_seconds * (SLOWDOWN if mine.get("slow") else 1))
        return x

    return work


def run_task(
    custom: client.CustomObjectsApi, label: str, fn: Callable[[int], int], items: int, **kw: Any
) -> Run:
    name = f"tail-{label}-{uuid.uuid4().hex[:5]}"
    began = time.perf_counter()
    values = kubemap.map(fn, range(items), **opts(name=name, **kw))
    seconds = time.perf_counter() - began
    assert values == list(range(items)), f"{label}: wrong results"
    body = custom.get_namespaced_custom_object(
        "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name
    )
    print(f"  {label}: {seconds:.1f}s", file=sys.stderr)
    return Run(label, seconds, dict(body.get("status") or {}))


def straggler(
    custom: client.CustomObjectsApi, what: str, items: int, item_seconds: float, **kw: Any
) -> list[str]:
    """The three runs of one mode; the table's lines."""
    store = os.environ.get("KUBEMAP_STORE", "").rstrip("/")
    if not store.startswith("s3://"):
        raise SystemExit("KUBEMAP_STORE must be the s3:// store the workers use")
    claims = f"{store}/bench-tail-claims"
    runs = [
        run_task(custom, "baseline", straggling(None, item_seconds), items, **kw),
        run_task(
            custom,
            "speculation",
            straggling(f"{claims}/{uuid.uuid4().hex}", item_seconds),
            items,
            speculation=True,
            **kw,
        ),
        run_task(
            custom,
            "no-speculation",
            straggling(f"{claims}/{uuid.uuid4().hex}", item_seconds),
            items,
            speculation=False,
            **kw,
        ),
    ]
    base = runs[0].seconds
    lines = [f"straggler, {what}, one worker {SLOWDOWN}x slower:"]
    for run, target in zip(
        runs, ("", f"target <= {WITH_TARGET}x", f"target >= {WITHOUT_TARGET}x"), strict=True
    ):
        st = run.status
        ratio = run.seconds / base
        met = ""
        if target:
            ok = ratio <= WITH_TARGET if "<=" in target else ratio >= WITHOUT_TARGET
            met = f"  ({target}: {'met' if ok else 'MISSED'})"
        copies = (
            f"  backups {st.get('speculated', 0)}, won {st.get('speculationWon', 0)}, "
            f"wasted {st.get('speculationWasted', 0)}"
        )
        lines.append(f"  {run.label:<16} {run.seconds:7.1f}s  {ratio:5.2f}x{met}{copies}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--item-ms", type=float, default=20.0)
    parser.add_argument("--pods", action="store_true", help="also the pod-mode straggler")
    parser.add_argument("--no-throttle", action="store_true", help="skip the throttled part")
    parser.add_argument("--quick", action="store_true", help="throttled part: 40 items, not 200")
    args = parser.parse_args()
    config.load_kube_config()
    custom = client.CustomObjectsApi()
    lines: list[str] = []
    name = f"bench-tail-{uuid.uuid4().hex[:4]}"
    wp = WorkerPool(name, namespace=NAMESPACE, replicas=args.workers, idle_ttl_seconds=0).create()
    try:
        deadline = time.monotonic() + 300
        while wp.status().ready < args.workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"pool {name}: {args.workers} workers not ready in 300 s")
            time.sleep(0.5)
        kubemap.map(straggling(None, 0.0), range(args.workers * 4), **opts(pool=name))  # warm
        what = f"warm pool of {args.workers}, {args.items} items of {args.item_ms:g} ms"
        lines += straggler(custom, what, args.items, args.item_ms / 1000, pool=name)
    finally:
        wp.delete()
    if args.pods:
        what = "pods, 64 items of 1 s, 4 per pod, 8 at once"
        lines += straggler(custom, what, 64, 1.0, parallelism=8, items_per_pod=4)
    if not args.no_throttle:
        lines.append(measure_throttle(items=40 if args.quick else 200).line())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
