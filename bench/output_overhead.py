"""What keeping the workers' output costs (issue 22 item 3): the same 10,000 x 10 ms task,
each item printing a line, with and without capture.

    .venv/bin/python bench/output_overhead.py                     # local backend
    eval "$(tests/cluster/testcluster env)"                       # and, with a cluster:
    .venv/bin/python bench/output_overhead.py --pool --workers 4  # warm pools too

Each item's output is caught at the file-descriptor level, echoed, and kept in one object per
slice (kubemap.task.output) unless the worker's environment says KUBEMAP_KEEP_OUTPUT=0: only
this bench sets that. Locally the switch is set in this process (the local backend's worker
processes start afresh when the environment changes); on a cluster two warm pools are made,
one whose workers have KUBEMAP_KEEP_OUTPUT=0 in their env. Runs alternate on/off so that drift
on the shared machine falls on both; the figure is the ratio of the median wall times
(on / off), with each round's ratio, and the objects and bytes one run keeps. The items'
echoed lines go to /dev/null (this process's stdout is not the workers').
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import kubemap
from kubemap.stores import open_store
from kubemap.task.output import ENV_KEEP_OUTPUT, OUTPUT_PREFIX

ITEM_SECONDS = 0.01


def sleepy(x: int) -> int:
    time.sleep(ITEM_SECONDS)
    print(f"item {x}: done")
    return x


def timed(run: Callable[[], Any]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def report(label: str, on: list[float], off: list[float]) -> float:
    ratio = statistics.median(on) / statistics.median(off)
    rounds = ", ".join(f"{a / b:.3f}" for a, b in zip(on, off, strict=True))
    print(
        f"{label}: keeping on {statistics.median(on):.2f} s, off {statistics.median(off):.2f} s "
        f"(medians of {len(on)}): ratio {ratio:.3f} (rounds: {rounds})",
        flush=True,
    )
    return ratio


def local(items: int, parallelism: int, rounds: int) -> float:
    store = tempfile.mkdtemp(prefix="kubemap-output-bench-")
    on: list[float] = []
    off: list[float] = []
    objects = kept = 0
    for n in range(rounds):
        for keeping in (True, False) if n % 2 == 0 else (False, True):
            if keeping:
                os.environ.pop(ENV_KEEP_OUTPUT, None)
            else:
                os.environ[ENV_KEEP_OUTPUT] = "0"
            name = f"bench-{'on' if keeping else 'off'}-{uuid.uuid4().hex[:6]}"
            seconds = timed(
                lambda name=name: kubemap.submit(
                    sleepy, range(items), name=name, store=store, parallelism=parallelism
                ).results()
            )
            task = open_store(store).child(name)
            keys = list(task.list(OUTPUT_PREFIX))
            assert bool(keys) == keeping, f"{name}: {len(keys)} output objects"
            objects = max(objects, len(keys))
            kept = max(kept, sum(task.size(k) for k in keys))
            (on if keeping else off).append(seconds)
    os.environ.pop(ENV_KEEP_OUTPUT, None)
    print(
        f"local: {items} items, parallelism {parallelism}, {objects} output objects ({kept} bytes) per run"
    )
    return report("local", on, off)


def pool(items: int, workers: int, rounds: int) -> float:
    from kubemap.api.workerpool import WorkerPool

    namespace = os.environ.get("BENCH_NAMESPACE", "default")
    store = os.environ.get("KUBEMAP_STORE")
    suffix = uuid.uuid4().hex[:5]
    pools = {
        True: WorkerPool(f"bench-keep-{suffix}", namespace=namespace, replicas=workers),
        False: WorkerPool(
            f"bench-nokeep-{suffix}",
            namespace=namespace,
            replicas=workers,
            env={ENV_KEEP_OUTPUT: "0"},
        ),
    }
    try:
        for wp in pools.values():
            wp.create()
        deadline = time.monotonic() + 300
        for wp in pools.values():
            while wp.status().ready < workers:
                if time.monotonic() > deadline:
                    raise SystemExit(f"pool {wp.name} did not get {workers} ready workers")
                time.sleep(1)
        opts: dict[str, Any] = {"backend": "kubernetes", "namespace": namespace, "store": store}
        for wp in pools.values():  # warm up: each worker loads the function once
            kubemap.map(sleepy, range(workers * 4), pool=wp.name, **opts)
        on: list[float] = []
        off: list[float] = []
        for n in range(rounds):
            for keeping in (True, False) if n % 2 == 0 else (False, True):
                name = pools[keeping].name
                seconds = timed(
                    lambda name=name: kubemap.map(sleepy, range(items), pool=name, **opts)
                )
                (on if keeping else off).append(seconds)
        print(f"warm pool: {items} items, {workers} workers per pool")
        return report("warm pool", on, off)
    finally:
        for wp in pools.values():
            try:
                wp.delete(missing_ok=True)
            except Exception as exc:  # a bench leaves no pool behind if it can help it
                print(f"could not delete pool {wp.name}: {exc}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--parallelism", type=int, default=8, help="local worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="runs with and without, each")
    parser.add_argument("--pool", action="store_true", help="also on warm pools (a cluster)")
    parser.add_argument("--workers", type=int, default=4, help="workers per warm pool")
    parser.add_argument("--no-local", action="store_true")
    args = parser.parse_args()
    if not args.no_local:
        local(args.items, args.parallelism, args.rounds)
    if args.pool:
        pool(args.items, args.workers, args.rounds)


if __name__ == "__main__":
    main()
