"""The same task with and without one of kubemap's recording switches, as a ratio: the shared
part of bench/timing_overhead.py (KUBEMAP_TIMINGS) and bench/output_overhead.py
(KUBEMAP_KEEP_OUTPUT).

Locally the switch is set in this process (the local backend's worker processes start afresh
when the environment changes); on a cluster two warm pools are made, one whose workers have
the switch set to 0 in their env, and the task alternates between them. Runs alternate on/off
so that drift on the shared machine falls on both; the figure is the ratio of the median wall
times (on / off), with each round's ratio printed beside it.
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
from dataclasses import dataclass
from typing import Any

import kubemap
from kubemap.stores import Store, open_store


@dataclass(frozen=True)
class Switch:
    what: str  # "recording", "keeping": how the report names the switch being on
    env: str  # the worker environment variable that turns it off when "0"
    prefix: str  # what it writes under the task's prefix, to check it did (or did not)
    item: Callable[[int], int]  # the task's function: defined in the calling script, so that
    # cloudpickle sends it by value to workers that cannot import bench/


def timed(run: Callable[[], Any]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def report(switch: Switch, label: str, on: list[float], off: list[float]) -> float:
    ratio = statistics.median(on) / statistics.median(off)
    rounds = ", ".join(f"{a / b:.3f}" for a, b in zip(on, off, strict=True))
    print(
        f"{label}: {switch.what} on {statistics.median(on):.2f} s, off "
        f"{statistics.median(off):.2f} s (medians of {len(on)}): ratio {ratio:.3f} "
        f"(rounds: {rounds})",
        flush=True,
    )
    return ratio


def written(task: Store, switch: Switch) -> tuple[int, int]:
    """How many objects the switch wrote for one task, and their bytes."""
    keys = list(task.list(switch.prefix))
    return len(keys), sum(task.size(k) for k in keys)


def local(switch: Switch, items: int, parallelism: int, rounds: int) -> float:
    store = tempfile.mkdtemp(prefix="kubemap-switch-bench-")
    on: list[float] = []
    off: list[float] = []
    objects = size = 0
    for n in range(rounds):
        for enabled in (True, False) if n % 2 == 0 else (False, True):
            if enabled:
                os.environ.pop(switch.env, None)
            else:
                os.environ[switch.env] = "0"
            name = f"bench-{'on' if enabled else 'off'}-{uuid.uuid4().hex[:6]}"
            seconds = timed(
                lambda name=name: kubemap.submit(
                    switch.item, range(items), name=name, store=store, parallelism=parallelism
                ).results()
            )
            count, bytes_ = written(open_store(store).child(name), switch)
            assert bool(count) == enabled, f"{name}: {count} objects under {switch.prefix}"
            objects, size = max(objects, count), max(size, bytes_)
            (on if enabled else off).append(seconds)
    os.environ.pop(switch.env, None)
    print(
        f"local: {items} items, parallelism {parallelism}, {objects} objects under "
        f"{switch.prefix} ({size:,} bytes) per run"
    )
    return report(switch, "local", on, off)


def pool(switch: Switch, items: int, workers: int, rounds: int) -> float:
    from kubemap.api.workerpool import WorkerPool

    namespace = os.environ.get("BENCH_NAMESPACE", "default")
    store = os.environ.get("KUBEMAP_STORE")
    suffix = uuid.uuid4().hex[:5]
    pools = {
        True: WorkerPool(f"bench-on-{suffix}", namespace=namespace, replicas=workers),
        False: WorkerPool(
            f"bench-off-{suffix}", namespace=namespace, replicas=workers, env={switch.env: "0"}
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
            kubemap.map(switch.item, range(workers * 4), pool=wp.name, **opts)
        on: list[float] = []
        off: list[float] = []
        for n in range(rounds):
            for enabled in (True, False) if n % 2 == 0 else (False, True):
                name = pools[enabled].name
                seconds = timed(
                    lambda name=name: kubemap.map(switch.item, range(items), pool=name, **opts)
                )
                (on if enabled else off).append(seconds)
        print(f"warm pool: {items} items, {workers} workers per pool")
        return report(switch, "warm pool", on, off)
    finally:
        for wp in pools.values():
            try:
                wp.delete(missing_ok=True)
            except Exception as exc:  # a bench leaves no pool behind if it can help it
                print(f"could not delete pool {wp.name}: {exc}", file=sys.stderr)


def main(switch: Switch, description: str) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--parallelism", type=int, default=8, help="local worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="runs with and without, each")
    parser.add_argument("--pool", action="store_true", help="also on warm pools (a cluster)")
    parser.add_argument("--workers", type=int, default=4, help="workers per warm pool")
    parser.add_argument("--no-local", action="store_true")
    args = parser.parse_args()
    if not args.no_local:
        local(switch, args.items, args.parallelism, args.rounds)
    if args.pool:
        pool(switch, args.items, args.workers, args.rounds)
