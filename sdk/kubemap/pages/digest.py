"""A task's timing records summarised for the dashboard: bounded whatever the task's size.

`kubemap timeline` draws every slice run as a bar; a dashboard page cannot: a task of
1,000,000 items has ~10,000 records (~2.5 MB), and a browser drawing them all, every few
seconds, is slow. The digest is what the page draws instead, computed where the records are
(the operator, or `kubemap dashboard` on this machine) and a few tens of KB at any size:

* workers x time as at most LANES lanes of BINS time bins, each bin holding how busy the
  lane was (0..1), and whether a failed, retried or straggling slice ran in it. With more
  workers than lanes, the slowest workers (time per item) keep their own lane and the rest
  share one ("37 other workers"), so the worker that makes the task slow is always named;
* items/s over time (BINS points), the time split, the slowest slices and workers;
* the summary lines of `kubemap timeline --summary`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from kubemap.pages.timeline import seconds_text, summary_lines
from kubemap.task.timings import SliceTiming, stragglers, summarize, throughput

LANES = 40
BINS = 120
TOP = 10  # slowest slices and workers listed


def natural(name: str) -> list[Any]:
    """Sort key: pod-2 before pod-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def digest(
    timings: Sequence[SliceTiming], *, lanes: int = LANES, bins: int = BINS
) -> dict[str, Any]:
    """The JSON-ready summary the dashboard's task page draws (see the module's docstring)."""
    summary = summarize(timings)
    late = stragglers(timings)
    late_ids = {id(t) for t in late}
    per_worker = {w.worker: w for w in summary.workers}
    out: dict[str, Any] = {
        "slices": summary.slices,
        "retried": summary.attempts_retried,
        "items": summary.items,
        "succeeded": summary.succeeded,
        "failed": summary.failed,
        "wall": _rounded(summary.wall, 4),
        "itemsPerSecond": _rounded(summary.items_per_second, 3),
        "p50": _rounded(summary.p50),
        "p95": _rounded(summary.p95),
        "split": {
            "pod start": _rounded(summary.boot, 4),
            "fetch": _rounded(summary.fetch, 4),
            "compute": _rounded(summary.compute, 4),
            "write": _rounded(summary.write, 4),
        },
        "stragglers": len(late),
        "summaryLines": summary_lines(summary),
        "slowestWorker": None,
        "slowestItem": None,
        "lanes": [],
        "span": 0.0,
        "bins": bins,
        "rate": [],
        "slowest": [],
        "workers": [],
    }
    if summary.slowest_worker is not None:
        w = summary.slowest_worker
        out["slowestWorker"] = {
            "worker": w.worker,
            "perItem": _rounded(w.per_item),
            "perItemText": seconds_text(w.per_item),
            "items": w.items,
            "slices": w.slices,
        }
    if summary.slowest_item is not None:
        index, seconds, who = summary.slowest_item
        out["slowestItem"] = {"index": index, "seconds": _rounded(seconds), "worker": who}
    if not timings:
        return out
    origin = min(t.start for t in timings)
    span = max(t.end for t in timings) - origin
    out["span"] = round(max(span, 0.0), 4)
    width = span / bins if span > 0 else 1.0

    # Which workers keep a lane of their own: all of them, or the slowest per item.
    names = sorted(per_worker, key=natural)
    if len(names) > lanes:
        by_speed = sorted(names, key=lambda n: -(per_worker[n].per_item or 0.0))
        own = sorted(by_speed[: lanes - 1], key=natural)
    else:
        own = names
    lane_of = {name: i for i, name in enumerate(own)}
    others = len(names) - len(own)
    rows = len(own) + (1 if others else 0)
    busy = [[0.0] * bins for _ in range(rows)]
    flags: list[dict[int, set[str]]] = [{} for _ in range(rows)]
    late_workers: set[str] = set()
    for t in timings:
        row = lane_of.get(t.worker, len(own))
        lo, hi = t.start - origin, t.end - origin
        first, last = min(bins - 1, int(lo / width)), min(bins - 1, int(hi / width))
        for b in range(first, last + 1):
            overlap = min(hi, (b + 1) * width) - max(lo, b * width)
            busy[row][b] += max(overlap, 0.0) / width
            marks = flags[row].setdefault(b, set())
            if t.outcome in ("failed", "error"):
                marks.add("failed")
            if t.attempt > 0:
                marks.add("retry")
            if id(t) in late_ids:
                marks.add("straggler")
        if id(t) in late_ids:
            late_workers.add(t.worker)
    for row in range(rows):
        if row < len(own):
            name, members = own[row], 1
        else:
            name, members = f"{others} other workers", others
        totals = per_worker.get(name)
        out["lanes"].append(
            {
                "worker": name,
                "members": members,
                "busy": [round(min(b / members, 1.0), 2) for b in busy[row]],
                "marks": {str(b): sorted(m) for b, m in sorted(flags[row].items()) if m},
                "perItem": _rounded(totals.per_item) if totals else None,
                "straggler": name in late_workers,
            }
        )
    out["rate"] = [[round(x, 3), round(r, 3)] for x, r in throughput(timings, bins=bins)]
    ranked = sorted(
        (t for t in timings if t.per_item is not None), key=lambda t: -(t.per_item or 0.0)
    )
    out["slowest"] = [
        {
            "first": t.first,
            "count": t.count,
            "attempt": t.attempt,
            "worker": t.worker,
            "perItem": _rounded(t.per_item),
            "slowestItem": list(t.slowest) if t.slowest else None,
            "straggler": id(t) in late_ids,
        }
        for t in ranked[:TOP]
    ]
    out["workers"] = [
        {
            "worker": w.worker,
            "slices": w.slices,
            "items": w.items,
            "busy": _rounded(w.busy, 4),
            "perItem": _rounded(w.per_item),
            "straggler": w.worker in late_workers,
        }
        for w in sorted(summary.workers, key=lambda w: -(w.per_item or 0.0))[:TOP]
    ]
    return out
