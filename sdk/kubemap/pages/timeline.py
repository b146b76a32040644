"""The pictures of `kubemap timeline`: a self-contained HTML page (inline SVG and CSS, nothing
fetched from the network) and, with matplotlib, a PNG, both drawn from a task's timing
records (kubemap.task.timings).

The page shows workers x time with every slice run as one bar (`<rect class="slice ...">`:
colour by outcome, a dashed outline on a retry, a thick dark outline on a straggler, a grey
lead-in where the process started), items/s over time, where the time went (pod start,
fetch, compute, write) and the slowest slices.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from html import escape

from kubemap.errors import ConfigError
from kubemap.task.timings import (
    STRAGGLER_SECONDS,
    SliceTiming,
    Summary,
    stragglers,
    summarize,
    throughput,
)

COLOURS = {
    "succeeded": "#4c9a5f",
    "failed": "#d1453b",
    "stopped": "#e59b2f",
    "skipped": "#9aa5b1",
    "error": "#7b3fa0",
}
SPLIT_COLOURS = {
    "pod start": "#b8c2cc",
    "fetch": "#5b8def",
    "compute": "#4c9a5f",
    "write": "#e59b2f",
}
WIDTH = 1100  # drawing width of the charts, px
LABELS = 190  # room for the worker names left of the lanes
PNG_EXTRA = "pip install 'kubemap[timeline]'"

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1f2933}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #e4e7eb}
th{font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:12px;height:12px;
vertical-align:middle;margin-right:4px;border-radius:2px}
svg text{font:11px system-ui,sans-serif;fill:#52606d}
rect.slice:hover{opacity:.75}rect.retry{stroke:#1f2933;stroke-dasharray:3 2;stroke-width:1}
rect.straggler{stroke:#111;stroke-width:2.5}
.note{color:#52606d}
"""


def seconds_text(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def summary_lines(summary: Summary) -> list[str]:
    """The summary as `kubemap timeline --summary` prints it."""
    rate = f"{summary.items_per_second:,.1f}" if summary.items_per_second else "-"
    lines = [
        f"slices:        {summary.slices} ({summary.attempts_retried} retried)",
        f"items run:     {summary.items} ({summary.succeeded} succeeded, {summary.failed} failed)",
        f"wall time:     {seconds_text(summary.wall)}",
        f"items/s:       {rate}",
        f"item time:     p50 {seconds_text(summary.p50)}, p95 {seconds_text(summary.p95)}",
        "time split:    " + ", ".join(f"{k} {v}" for k, v in _split_text(summary)),
        f"stragglers:    {summary.stragglers} slice(s) over 2x the median time per item "
        f"(and {STRAGGLER_SECONDS:g} s late)",
    ]
    worker = summary.slowest_worker
    if worker is not None:
        lines.append(
            f"slowest worker: {worker.worker} ({seconds_text(worker.per_item)} per item over "
            f"{worker.items} item(s) in {worker.slices} slice(s))"
        )
    if summary.slowest_item is not None:
        index, seconds, who = summary.slowest_item
        lines.append(f"slowest item:  index {index}, {seconds_text(seconds)}, on {who}")
    return lines


def _split(summary: Summary) -> list[tuple[str, float]]:
    return [
        ("pod start", summary.boot),
        ("fetch", summary.fetch),
        ("compute", summary.compute),
        ("write", summary.write),
    ]


def _split_text(summary: Summary) -> list[tuple[str, str]]:
    parts = _split(summary)
    total = sum(v for _, v in parts) or 1.0
    return [(name, f"{seconds_text(v)} ({100 * v / total:.0f} %)") for name, v in parts]


# -- HTML ----------------------------------------------------------------------------------------
def render_html(name: str, timings: Sequence[SliceTiming]) -> str:
    summary = summarize(timings)
    slow = {id(t) for t in stragglers(timings)}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>kubemap timeline: {escape(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Timeline of task {escape(name)}</h1>",
        f'<p class="note">{len(timings)} slice run(s) from the timing records in the task\'s '
        f"store; drawn {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.</p>",
        "<h2>Summary</h2><table>",
    ]
    for line in summary_lines(summary):
        key, _, value = line.partition(":")
        parts.append(f"<tr><th>{escape(key)}</th><td>{escape(value.strip())}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Workers &times; time</h2>")
    parts.append(_legend())
    parts.append(_gantt(timings, slow))
    parts.append("<h2>Items per second</h2>")
    parts.append(_rate_chart(timings))
    parts.append("<h2>Where the time went</h2>")
    parts.append(_split_bar(summary))
    parts.append(_worker_table(summary, timings, slow))
    parts.append("<h2>Slowest slices (time per item)</h2>")
    parts.append(_slowest_table(timings, slow))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _legend() -> str:
    items = [
        f'<span><i class="sw" style="background:{c}"></i>{escape(k)}</span>'
        for k, c in COLOURS.items()
    ]
    items.append('<span><i class="sw" style="background:#b8c2cc"></i>pod/process start</span>')
    items.append(
        '<span><i class="sw" style="border:1px dashed #1f2933"></i>retry (attempt &gt; 0)</span>'
    )
    items.append(
        '<span><i class="sw" style="border:2.5px solid #111"></i>straggler (over 2x the median '
        f"time per item, and {STRAGGLER_SECONDS:g} s late)</span>"
    )
    return f'<p class="legend">{"".join(items)}</p>'


def _ticks(span: float, count: int = 8) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) from 0 to span."""
    if span <= 0:
        return [0.0]
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(n * power for n in (1, 2, 5, 10) if raw <= n * power)
    return [round(i * step, 10) for i in range(int(span / step + 1e-9) + 1)]


def _gantt(timings: Sequence[SliceTiming], slow: set[int]) -> str:
    if not timings:
        return "<p>No slices were recorded.</p>"
    workers = sorted({t.worker for t in timings})
    lane = 18 if len(workers) <= 60 else max(3, 1080 // len(workers))
    origin = min(t.start - (t.boot or 0.0) for t in timings)
    span = max(t.end for t in timings) - origin or 1e-3
    scale = (WIDTH - LABELS - 10) / span
    height = lane * len(workers) + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}">']
    for row, worker in enumerate(workers):
        y = row * lane
        if row % 2:
            out.append(
                f'<rect x="{LABELS}" y="{y}" width="{WIDTH - LABELS}" height="{lane}" fill="#f5f7fa"/>'
            )
        if lane >= 10:
            out.append(
                f'<text x="{LABELS - 6}" y="{y + lane - 5}" text-anchor="end">{escape(worker[-30:])}</text>'
            )
    lanes = {w: i for i, w in enumerate(workers)}
    for t in timings:
        y = lanes[t.worker] * lane + 1
        x = LABELS + (t.start - origin) * scale
        if t.boot:
            bx = x - t.boot * scale
            out.append(
                f'<rect class="boot" x="{bx:.1f}" y="{y + lane / 4:.1f}" width="{t.boot * scale:.1f}" '
                f'height="{lane / 2 - 1:.1f}" fill="{SPLIT_COLOURS["pod start"]}"><title>process start '
                f"{seconds_text(t.boot)} before its first slice</title></rect>"
            )
        classes = ["slice", t.outcome]
        if t.attempt > 0:
            classes.append("retry")
        if id(t) in slow:
            classes.append("straggler")
        tip = (
            f"items {t.first}..{t.first + t.count - 1}, attempt {t.attempt}, {t.outcome}\n"
            f"worker {t.worker}\nfetch {seconds_text(t.fetch)}, compute {seconds_text(t.compute)}, "
            f"write {seconds_text(t.write)}\n{t.ran} run: {t.succeeded} succeeded, {t.failed} failed"
            + (f", {t.skipped} already done" if t.skipped else "")
            + (f", {t.unrun} left unrun" if t.unrun else "")
            + (f"\n{seconds_text(t.per_item)} per item" if t.per_item is not None else "")
            + (
                f"\nslowest item {t.slowest[0]}: {seconds_text(t.slowest[1])}"
                if t.slowest is not None
                else ""
            )
            + (f"\nerror: {t.error}" if t.error else "")
        )
        out.append(
            f'<rect class="{" ".join(classes)}" data-first="{t.first}" data-count="{t.count}" '
            f'data-attempt="{t.attempt}" data-worker="{escape(t.worker)}" x="{x:.1f}" y="{y}" '
            f'width="{max(1.0, t.seconds * scale):.1f}" height="{lane - 2}" '
            f'fill="{COLOURS[t.outcome]}"><title>{escape(tip)}</title></rect>'
        )
    axis = lane * len(workers) + 14
    for tick in _ticks(span):
        x = LABELS + tick * scale
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{axis - 10}" stroke="#e4e7eb"/>')
        out.append(f'<text x="{x:.1f}" y="{axis}" text-anchor="middle">{tick:g} s</text>')
    out.append("</svg>")
    return "".join(out)


def _rate_chart(timings: Sequence[SliceTiming]) -> str:
    points = list(throughput(timings))
    if not points:
        return "<p>No items ran.</p>"
    height, top = 160, max(r for _, r in points) or 1.0
    span = points[-1][0] + points[0][0]
    scale_x = (WIDTH - LABELS - 10) / (span or 1.0)
    coords = " ".join(
        f"{LABELS + x * scale_x:.1f},{height - 20 - r / top * (height - 30):.1f}" for x, r in points
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}">'
        f'<line x1="{LABELS}" x2="{WIDTH - 10}" y1="{height - 20}" y2="{height - 20}" stroke="#9aa5b1"/>'
        f'<text x="{LABELS - 6}" y="14" text-anchor="end">{top:,.1f} items/s</text>'
        f'<text x="{LABELS - 6}" y="{height - 20}" text-anchor="end">0</text>'
        f'<text x="{WIDTH - 10}" y="{height - 4}" text-anchor="end">{span:.2f} s</text>'
        f'<polyline class="rate" fill="none" stroke="#3e7cb1" stroke-width="2" points="{coords}"/></svg>'
    )


def _split_bar(summary: Summary) -> str:
    parts = _split(summary)
    total = sum(v for _, v in parts)
    if total <= 0:
        return "<p>No time was recorded.</p>"
    width, x, out = WIDTH - 10, 0.0, []
    out.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="34">')
    for name, value in parts:
        w = value / total * width
        out.append(
            f'<rect class="split" data-part="{name}" x="{x:.1f}" y="0" width="{w:.1f}" height="20" '
            f'fill="{SPLIT_COLOURS[name]}"><title>{name}: {seconds_text(value)}</title></rect>'
        )
        x += w
    out.append("</svg>")
    legend = "".join(
        f'<span><i class="sw" style="background:{SPLIT_COLOURS[k]}"></i>{k}: {escape(v)}</span>'
        for k, v in _split_text(summary)
    )
    note = (
        ""
        if summary.boot
        else " Pod start: not known for these records (a warm worker's "
        "slices after its first, or no /proc)."
    )
    return (
        "".join(out)
        + f'<p class="legend">{legend}</p><p class="note">Summed over every slice run.{note}</p>'
    )


def _worker_table(summary: Summary, timings: Sequence[SliceTiming], slow: set[int]) -> str:
    late = {w.worker: 0 for w in summary.workers}
    for t in timings:
        if id(t) in slow:
            late[t.worker] += 1
    rows = [
        "<table><tr><th>worker</th><th class=num>slices</th><th class=num>items</th>"
        "<th class=num>busy</th><th class=num>per item</th><th class=num>stragglers</th></tr>"
    ]
    for w in sorted(summary.workers, key=lambda w: -(w.per_item or 0.0)):
        rows.append(
            f"<tr><td>{escape(w.worker)}</td><td class=num>{w.slices}</td><td class=num>{w.items}"
            f"</td><td class=num>{seconds_text(w.busy)}</td><td class=num>"
            f"{seconds_text(w.per_item)}</td><td class=num>{late[w.worker]}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _slowest_table(timings: Sequence[SliceTiming], slow: set[int], limit: int = 10) -> str:
    ranked = sorted(
        (t for t in timings if t.per_item is not None), key=lambda t: -(t.per_item or 0.0)
    )
    rows = [
        "<table><tr><th>items</th><th>attempt</th><th>worker</th><th class=num>per item</th>"
        "<th>slowest item</th><th>straggler</th></tr>"
    ]
    for t in ranked[:limit]:
        item = f"{t.slowest[0]} ({seconds_text(t.slowest[1])})" if t.slowest else "-"
        rows.append(
            f"<tr><td>{t.first}..{t.first + t.count - 1}</td><td>{t.attempt}</td>"
            f"<td>{escape(t.worker)}</td><td class=num>{seconds_text(t.per_item)}</td>"
            f"<td>{item}</td><td>{'yes' if id(t) in slow else ''}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


# -- PNG ---------------------------------------------------------------------------------------
def render_png(name: str, timings: Sequence[SliceTiming], path: str) -> None:
    """The same pictures as a PNG, with matplotlib (ConfigError naming the extra if absent)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            f"--png draws with matplotlib, which is not installed: {PNG_EXTRA} (or pip install "
            "matplotlib); the HTML page (without --png) needs nothing more"
        ) from None
    summary = summarize(timings)
    slow = {id(t) for t in stragglers(timings)}
    workers = sorted({t.worker for t in timings})
    lanes = {w: i for i, w in enumerate(workers)}
    origin = min((t.start - (t.boot or 0.0) for t in timings), default=0.0)
    fig, (gantt, rate, split) = plt.subplots(
        3,
        1,
        figsize=(12, 4 + 0.25 * min(len(workers), 60)),
        gridspec_kw={"height_ratios": [max(3, min(len(workers), 60) / 4), 1.5, 0.5]},
    )
    for t in timings:
        row = lanes[t.worker]
        if t.boot:
            gantt.broken_barh(
                [(t.start - t.boot - origin, t.boot)],
                (row + 0.3, 0.4),
                color=SPLIT_COLOURS["pod start"],
            )
        gantt.broken_barh(
            [(t.start - origin, max(t.seconds, 1e-4))],
            (row + 0.05, 0.9),
            facecolors=COLOURS[t.outcome],
            edgecolors="#111" if id(t) in slow else ("#1f2933" if t.attempt else "none"),
            linewidth=2.5 if id(t) in slow else 1,
            linestyles="dashed" if t.attempt and id(t) not in slow else "solid",
        )
    gantt.set_yticks([i + 0.5 for i in range(len(workers))])
    gantt.set_yticklabels([w[-30:] for w in workers] if len(workers) <= 60 else [])
    gantt.set_xlabel("seconds")
    gantt.set_title(f"Task {name}: workers x time ({summary.slices} slice runs)")
    points = list(throughput(timings))
    if points:
        rate.plot([x for x, _ in points], [r for _, r in points], color="#3e7cb1")
    rate.set_ylabel("items/s")
    rate.set_ylim(bottom=0)
    left = 0.0
    for part, value in _split(summary):
        split.barh(0, value, left=left, color=SPLIT_COLOURS[part], label=part)
        left += value
    split.set_yticks([])
    split.set_xlabel("seconds, summed over slices")
    split.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
