"""kubemap quickstart: count the primes below 1,000,000 in 100 chunks, on this machine.

    python examples/quickstart.py

Runs on the embedded local backend (no cluster, no server): the function and its inputs
go to the local store (~/.cache/kubemap/store, or $KUBEMAP_STORE), worker processes run
the chunks, and the results come back in input order. The same call with
backend="kubernetes" runs one pod per chunk on a cluster.
"""

from __future__ import annotations

import math
import os
import time

import kubemap

LIMIT = 1_000_000
CHUNKS = 100


def count_primes(bounds: tuple[int, int]) -> int:
    """Primes p with lo <= p < hi, by trial division against primes up to sqrt(hi)."""
    lo, hi = bounds
    root = math.isqrt(hi) + 1
    small = [p for p in range(2, root) if all(p % q for q in range(2, math.isqrt(p) + 1))]
    return sum(1 for n in range(max(lo, 2), hi) if all(n % p for p in small if p * p <= n))


def main() -> None:
    step = LIMIT // CHUNKS
    chunks = [(lo, lo + step) for lo in range(0, LIMIT, step)]
    started = time.perf_counter()
    counts = kubemap.map(count_primes, chunks, parallelism=os.cpu_count())
    elapsed = time.perf_counter() - started

    print(f"primes below {LIMIT:,}: {sum(counts):,}")  # 78,498
    for (lo, hi), count in list(zip(chunks, counts, strict=True))[:3]:
        print(f"  [{lo:>9,}, {hi:>9,}): {count:,}")
    print(f"  ... {len(chunks)} chunks in all")
    print(f"{len(chunks)} inputs mapped in {elapsed:.2f} s on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
