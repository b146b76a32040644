"""kubemap's local backend next to multiprocessing.Pool.map and a plain loop, in one process.

    python bench/local_map.py            # full run (about a minute on 2 cores)
    python bench/local_map.py --quick    # fewer items, for a smoke test

Cases: 100,000 tiny items (x -> 2*x) and 2,000 items of 1 ms busy work (a spin loop, not
sleep), each timed best-of-3; the per-call overhead of many small kubemap.map calls in one
process, with the warm worker pool (kept between calls) and cold (a pool forked per call, as
before the pool was kept); plus the peak memory (ru_maxrss) of submitting 1,000,000
small inputs to the local store, measured in a fresh subprocess. Pool.map is timed with
the pool's start-up, as kubemap.map's includes its own. Targets (2 cores): 1 ms case within
15 % of Pool.map; tiny case under 1 s and within 10x of Pool.map; submit peak < 500 MB.
Prints PASS/FAIL per target; exits 0 unless something crashed (timings on a shared
machine are noisy).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import kubemap

REPEATS = 3


def double(x: int) -> int:
    return 2 * x


def busy_1ms(x: int) -> int:
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return x


def best_of(fn: Callable[[], Any], repeats: int = REPEATS) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def plain_loop(fn: Callable[[int], int], items: list[int]) -> list[int]:
    return [fn(x) for x in items]


def pool_map(fn: Callable[[int], int], items: list[int], cores: int) -> list[int]:
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        return pool.map(fn, items)


MEMORY_SCRIPT = """
import os, resource, sys, tempfile
import kubemap
n = int(sys.argv[1])
inputs = [f"item-{i}" for i in range(n)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as store:
    run = kubemap.submit(len, inputs, store=store, parallelism=1)
    submitted = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run.cancel()
    print(before / 1024, submitted / 1024, run.total)
"""


def submit_peak_mb(n: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.split()
    assert int(out[2]) == n, out
    return float(out[0]), float(out[1])


def per_call_seconds(calls: int, cores: int, *, warm: bool) -> float:
    """Mean wall time of kubemap.map(double, range(8)): mostly fixed per-call costs."""
    from kubemap.backends.local.processes import WARM

    kubemap.map(double, range(8), parallelism=cores)  # imports, first pool
    started = time.perf_counter()
    for _ in range(calls):
        if not warm:
            WARM.shutdown()  # the next call forks its workers anew
        assert kubemap.map(double, range(8), parallelism=cores) == [2 * x for x in range(8)]
    return (time.perf_counter() - started) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the items")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    scale = 10 if args.quick else 1
    cases = [
        ("tiny x->2x", double, list(range(100_000 // scale))),
        ("1 ms busy", busy_1ms, list(range(2_000 // scale))),
    ]
    print(f"kubemap {kubemap.__version__} local backend, {cores} cores, best of {REPEATS}\n")
    print(
        f"{'case':<12} {'items':>8} {'loop s':>8} {'Pool.map s':>10} {'kubemap s':>10} "
        f"{'km/Pool':>8} {'km/loop':>8}"
    )
    timings: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as store:
        os.environ["KUBEMAP_STORE"] = store  # the default store: map() cleans up after success
        for label, fn, items in cases:
            expected = [fn(x) for x in items[:10]]
            loop_s, _ = best_of(functools.partial(plain_loop, fn, items))
            pool_s, pool_out = best_of(functools.partial(pool_map, fn, items, cores))
            km_s, km_out = best_of(functools.partial(kubemap.map, fn, items, parallelism=cores))
            assert km_out == pool_out and km_out[:10] == expected, "kubemap returned wrong results"
            timings[label] = (loop_s, pool_s, km_s)
            print(
                f"{label:<12} {len(items):>8,} {loop_s:>8.3f} {pool_s:>10.3f} {km_s:>10.3f} "
                f"{km_s / pool_s:>7.2f}x {km_s / loop_s:>7.2f}x"
            )
        calls = 50 // scale
        cold = per_call_seconds(calls, cores, warm=False)
        warm = per_call_seconds(calls, cores, warm=True)
        print(
            f"\n{calls} calls of kubemap.map(x -> 2*x, range(8)): {1000 * cold:.1f} ms a call "
            f"with a pool forked per call, {1000 * warm:.1f} ms with the warm pool "
            f"({cold / warm:.1f}x)"
        )
        leftovers = [os.path.join(d, f) for d, _, files in os.walk(store) for f in files]
    n_submit = 1_000_000 // scale
    before_mb, peak_mb = submit_peak_mb(n_submit)
    print(
        f"\nsubmit {n_submit:,} small inputs to the local store: peak RSS {peak_mb:.0f} MB "
        f"(the input list alone: {before_mb:.0f} MB)"
    )
    if leftovers:
        print(f"note: {len(leftovers)} files left in the default store after map()")

    _, tiny_pool, tiny_km = timings["tiny x->2x"]
    _, busy_pool, busy_km = timings["1 ms busy"]
    targets = [
        (
            "1 ms busy: kubemap within 15% of Pool.map",
            busy_km <= 1.15 * busy_pool,
            f"{busy_km / busy_pool:.2f}x",
        ),
        ("tiny: kubemap under 1 s", tiny_km < 1.0, f"{tiny_km:.3f} s"),
        (
            "tiny: kubemap within 10x of Pool.map",
            tiny_km <= 10 * tiny_pool,
            f"{tiny_km / tiny_pool:.2f}x",
        ),
        ("submit 1M inputs: peak < 500 MB", peak_mb < 500, f"{peak_mb:.0f} MB"),
    ]
    print()
    for name, ok, value in targets:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value}")
    if args.quick:
        print("(--quick: a tenth of the items; the targets are for the full run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
