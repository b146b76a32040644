"""What the operator's metrics and status summary cost it per item (issue 22).

    .venv/bin/python bench/operator_metrics_cost.py [--slices 2000] [--items 500]

Each finished pod or lease goes through `taskstats.record_attempt` once: its items counted,
its timing record decoded and merged into the task's summary, its item times observed in the
`kubemap_item_duration_seconds` histogram (one observation per item). This feeds that many
finished leases of that many items each, then builds the summary once per 100 slices (as the
status flush would), and prints the operator's CPU per item as a share of a 10 ms item's
time: the ratio that says whether the operator keeps up with its workers.
"""

from __future__ import annotations

import argparse
import time

from kubemap.core.attempts import Attempt, AttemptState, Report
from kubemap.core.ranges import IndexRanges
from kubemap.task.timings import SliceTiming, bucket_of
from kubemap_operator import taskstats

ITEM_SECONDS = 0.010


def attempt(n: int, items: int) -> tuple[Attempt, IndexRanges]:
    first = n * items
    span = IndexRanges.span(first, first + items)
    buckets: dict[int, int] = {}
    for i in range(items):  # a spread of item times, as a real slice has
        b = bucket_of(ITEM_SECONDS * (1 + (i % 9) / 10))
        buckets[b] = buckets.get(b, 0) + 1
    record = SliceTiming(
        first=first, count=items, attempt=0, worker=f"w{n % 64}", start=1000.0 + n,
        fetch=0.01, compute=ITEM_SECONDS * items, write=0.01, ran=items, succeeded=items,
        buckets=buckets, slowest=(first, ITEM_SECONDS * 2),
    )  # fmt: skip
    report = Report(span, IndexRanges(), timings=(record.encode().decode(),))
    one = Attempt(
        name=f"l{n}", start=first, count=items, attempt=0, failures=0, infra_failures=0,
        state=AttemptState.SUCCEEDED, report=report,
    )  # fmt: skip
    return one, span


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=2000)
    parser.add_argument("--items", type=int, default=500)
    args = parser.parse_args()
    work = [attempt(n, args.items) for n in range(args.slices)]
    key = ("bench", "t")
    began = time.process_time()
    for n, (one, span) in enumerate(work):
        taskstats.record_attempt(key, "warm", one, span, IndexRanges())
        if n % 100 == 0:
            taskstats.TIMINGS.summary(key)
    spent = time.process_time() - began
    items = args.slices * args.items
    per_item = spent / items
    print(f"{args.slices} slices x {args.items} items: {spent:.2f} s of operator CPU")
    print(f"per item: {per_item * 1e6:.2f} us; per slice: {spent / args.slices * 1e3:.3f} ms")
    print(f"ratio to a {ITEM_SECONDS * 1e3:.0f} ms item: {per_item / ITEM_SECONDS:.5f}")


if __name__ == "__main__":
    main()
