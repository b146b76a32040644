"""kubemap.imap over tiny items: submit-to-first-result latency and peak memory, next to
multiprocessing.Pool.imap, at 100,000 and 1,000,000 items (local backend, file store).

    python bench/imap_latency.py            # 100k and 1M items (a few minutes on 2 cores)
    python bench/imap_latency.py --quick    # 10k and 100k

Each case runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own. The results
are consumed and dropped one by one, as a streaming consumer would. Memory must not grow
with N: the 1M case's peak should stay near the 100k case's (inputs are generated, never
held as a list). Prints one line per case and the ratios; exits 0 unless a case crashed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time


def tiny(x: int) -> int:
    return x + 1


def run_case(kind: str, n: int) -> dict[str, float]:
    import kubemap

    started = time.perf_counter()
    first = None
    total = 0
    if kind == "kubemap":
        stream = kubemap.imap(tiny, range(n), store=tempfile.mkdtemp(prefix="kubemap-bench-"))
    else:
        pool = multiprocessing.get_context("fork").Pool(os.cpu_count() or 1)
        stream = pool.imap(tiny, range(n), chunksize=1000)
    for value in stream:
        if first is None:
            first = time.perf_counter() - started
        total += value
    elapsed = time.perf_counter() - started
    if kind != "kubemap":
        pool.close()
    assert total == n * (n + 1) // 2, "wrong results"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"first": first or 0.0, "total": elapsed, "peak_mb": peak_mb}


def measure(kind: str, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--case", kind, str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]))))
        return 0
    sizes = (10_000, 100_000) if args.quick else (100_000, 1_000_000)
    print(f"{'case':<26} {'first result':>12} {'all':>9} {'peak RSS':>10}")
    found: dict[tuple[str, int], dict[str, float]] = {}
    for n in sizes:
        for kind in ("kubemap", "pool"):
            found[kind, n] = r = measure(kind, n)
            label = f"{'kubemap.imap' if kind == 'kubemap' else 'Pool.imap'} {n:,}"
            print(f"{label:<26} {r['first']:>11.3f}s {r['total']:>8.2f}s {r['peak_mb']:>8.0f}MB")
    small, big = sizes
    k_small, k_big = found["kubemap", small], found["kubemap", big]
    print(
        f"kubemap peak RSS {big:,} / {small:,}: {k_big['peak_mb'] / k_small['peak_mb']:.2f}x "
        f"(inputs {big // small}x)"
    )
    for n in sizes:
        k, p = found["kubemap", n], found["pool", n]
        print(
            f"{n:,}: first result kubemap/Pool {k['first'] / max(p['first'], 1e-6):.1f}x, "
            f"all {k['total'] / p['total']:.2f}x, peak RSS {k['peak_mb'] / p['peak_mb']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
