"""The dashboard's pages: an index of tasks and pools, a page per task, a page per pool.

Plain HTML with inline CSS, SVG and a few lines of script, nothing fetched from the network.
Every chart is drawn here, on the server, from a task's digest (kubemap.pages.digest): the
browser receives tens of KB whatever the task's size. Each page polls a JSON endpoint
(POLL_MS) and moves its progress without a reload; the task page's records section is sent
again only when the records changed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from kubemap.pages.timeline import COLOURS, SPLIT_COLOURS, seconds_text
from kubemap.pages.views import Failure, PoolRow, PoolView, TaskRow

POLL_MS = 2000
INDEX_TASKS = 300  # tasks the index lists, newest first
WIDTH = 1100
LABELS = 200

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:20px 28px;color:#1f2933}
a{color:#2563a8;text-decoration:none}a:hover{text-decoration:underline}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #e4e7eb}
th{font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;width:220px;height:12px;background:#e4e7eb;border-radius:3px;
overflow:hidden;vertical-align:middle}.bar i{display:block;height:100%;float:left}
.bar i.ok{background:#4c9a5f}.bar i.bad{background:#d1453b}
.phase{display:inline-block;padding:0 8px;border-radius:9px;background:#e4e7eb;font-size:12px}
.phase.Succeeded{background:#d5ecd9}.phase.Failed{background:#f6d3d0}.phase.Running{background:#dbe7fb}
.note{color:#52606d}.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin-right:4px;border-radius:2px}
svg text{font:11px system-ui,sans-serif;fill:#52606d}
details.failure{margin:4px 0}details.failure summary{cursor:pointer}
pre{background:#f5f7fa;padding:8px;overflow:auto;max-height:320px}
.why{background:#fff7e6;border-left:4px solid #e59b2f;padding:6px 12px}
nav{margin-bottom:10px}
"""


def _page(title: str, where: str, body: str, script: str = "") -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<nav><a href="/">kubemap dashboard</a> <span class="note">&middot; {escape(where)} '
        "&middot; read-only</span></nav>"
        f"{body}<script>{script}</script></body></html>"
    )


def task_href(row: TaskRow) -> str:
    return f"/tasks/{quote(row.namespace or '-', safe='')}/{quote(row.name, safe='')}"


def pool_href(row: PoolRow) -> str:
    return f"/pools/{quote(row.namespace or '-', safe='')}/{quote(row.name, safe='')}"


def progress_bar(row: TaskRow) -> str:
    total = max(row.total, 1)
    ok, bad = 100 * row.succeeded / total, 100 * row.failed / total
    return (
        f'<span class="bar" title="{row.succeeded} succeeded, {row.failed} failed of '
        f'{row.total}"><i class="ok" style="width:{ok:.2f}%"></i>'
        f'<i class="bad" style="width:{bad:.2f}%"></i></span>'
    )


def task_cells(row: TaskRow) -> str:
    """One task's table row (the index page; also sent by its JSON endpoint)."""
    return (
        f'<tr data-task="{escape(row.namespace)}/{escape(row.name)}">'
        f"<td>{escape(row.namespace)}</td>"
        f'<td><a href="{task_href(row)}">{escape(row.name)}</a></td>'
        f'<td><span class="phase {escape(row.phase)}">{escape(row.phase)}</span></td>'
        f"<td>{progress_bar(row)}</td>"
        f'<td class="num">{row.succeeded:,}</td><td class="num">{row.failed:,}</td>'
        f'<td class="num">{row.active:,}</td><td class="num">{row.total:,}</td>'
        f"<td>{escape(row.pool)}</td></tr>"
    )


def pool_cells(row: PoolRow) -> str:
    return (
        f'<tr data-pool="{escape(row.namespace)}/{escape(row.name)}">'
        f"<td>{escape(row.namespace)}</td>"
        f'<td><a href="{pool_href(row)}">{escape(row.name)}</a></td>'
        f'<td class="num">{row.replicas}</td><td class="num">{row.ready}</td>'
        f'<td class="num">{row.busy}</td><td class="num">{row.idle}</td>'
        f'<td class="num">{row.tasks_served}</td><td>{escape(row.message)}</td></tr>'
    )


_TASK_HEAD = (
    "<tr><th>namespace</th><th>task</th><th>phase</th><th>progress</th><th class=num>"
    "succeeded</th><th class=num>failed</th><th class=num>active</th><th class=num>total</th>"
    "<th>pool</th></tr>"
)
_POOL_HEAD = (
    "<tr><th>namespace</th><th>pool</th><th class=num>wanted</th><th class=num>ready</th>"
    "<th class=num>busy</th><th class=num>idle</th><th class=num>tasks served</th>"
    "<th>message</th></tr>"
)

_POLL_INDEX = """
async function poll(){try{const r=await fetch('/api/overview');if(r.ok){const j=await r.json();
document.getElementById('tasks').innerHTML=j.tasks;document.getElementById('pools').innerHTML=j.pools;}}
catch(e){}setTimeout(poll,__POLL__)}setTimeout(poll,__POLL__);
""".replace("__POLL__", str(POLL_MS))


def index_rows(tasks: Sequence[TaskRow], pools: Sequence[PoolRow]) -> dict[str, str]:
    """The index's tables: the newest INDEX_TASKS tasks (a page every 2 s stays small)."""
    more = len(tasks) - INDEX_TASKS
    note = (
        f'<tr><td colspan=9 class="note">and {more:,} older task(s) not listed</td></tr>'
        if more > 0
        else ""
    )
    return {
        "tasks": _TASK_HEAD + "".join(task_cells(t) for t in tasks[:INDEX_TASKS]) + note,
        "pools": _POOL_HEAD + "".join(pool_cells(p) for p in pools),
    }


def index_page(where: str, tasks: Sequence[TaskRow], pools: Sequence[PoolRow]) -> str:
    rows = index_rows(tasks, pools)
    body = (
        f"<h1>Tasks</h1><table id=tasks>{rows['tasks']}</table>"
        + ("" if tasks else '<p class="note">No tasks.</p>')
        + f"<h2>Worker pools</h2><table id=pools>{rows['pools']}</table>"
        + ("" if pools else '<p class="note">No worker pools.</p>')
    )
    return _page("kubemap dashboard", where, body, _POLL_INDEX)


# -- the task page -----------------------------------------------------------------------------
def progress_json(row: TaskRow) -> dict[str, Any]:
    return row.to_json()


_POLL_TASK = """
const api=__API__;let version=__VERSION__;
function show(t){document.getElementById('phase').textContent=t.phase;
document.getElementById('phase').className='phase '+t.phase;
for(const k of ['succeeded','failed','active','total']){document.getElementById(k).textContent=t[k].toLocaleString('en')}
const n=Math.max(t.total,1);document.querySelector('#progress i.ok').style.width=(100*t.succeeded/n)+'%';
document.querySelector('#progress i.bad').style.width=(100*t.failed/n)+'%';
document.getElementById('message').textContent=t.message||'';}
async function poll(){let again=true;try{const r=await fetch(api+'?have='+version);
if(r.ok){const j=await r.json();show(j.task);if(j.records!==undefined){
document.getElementById('records').innerHTML=j.records;version=j.version;}
again=!(j.task.finished&&j.final);}}catch(e){}
if(again)setTimeout(poll,__POLL__)}setTimeout(poll,__POLL__);
"""


def task_page(
    where: str,
    row: TaskRow,
    records_html: str,
    version: str,
    rerun: str,
) -> str:
    api = "/api" + task_href(row)
    body = (
        f"<h1>Task {escape(row.name)}</h1>"
        f'<p class="note">namespace {escape(row.namespace or "-")}'
        + (f", pool {escape(row.pool)}" if row.pool else "")
        + "</p>"
        f'<p><span id="phase" class="phase {escape(row.phase)}">{escape(row.phase)}</span> '
        f'<span id="progress">{progress_bar(row)}</span> '
        f'<b id="succeeded">{row.succeeded:,}</b> succeeded, <b id="failed">{row.failed:,}</b> '
        f'failed, <b id="active">{row.active:,}</b> active of <b id="total">{row.total:,}</b></p>'
        f'<p id="message" class="note">{escape(row.message)}</p>'
        f'<div id="records">{records_html}</div>'
        f"<h2>Rerun the failed indices</h2><p><code id=rerun>{escape(rerun)}</code> "
        '<span class="note">(indices that succeeded never run again)</span></p>'
        f'<p><a id="timeline" href="{task_href(row)}/timeline">The full timeline</a> '
        '<span class="note">(every slice run as a bar, as <code>kubemap timeline</code> '
        "draws it: large for a large task)</span></p>"
    )
    script = (
        _POLL_TASK.replace("__API__", json.dumps(api))
        .replace("__VERSION__", json.dumps(version))
        .replace("__POLL__", str(POLL_MS))
    )
    return _page(f"kubemap: {row.name}", where, body, script)


def records_section(
    digest: dict[str, Any] | None, failures: Sequence[Failure], failures_total: int, note: str
) -> str:
    """The part of the task page drawn from the store's records (sent again when they change)."""
    parts: list[str] = []
    if note:
        parts.append(f'<p class="note">{escape(note)}</p>')
    if digest is not None and digest["slices"]:
        parts.append(_why(digest))
        parts.append("<h2>Workers &times; time</h2>")
        parts.append(_legend())
        parts.append(_lanes(digest))
        parts.append("<h2>Items per second</h2>")
        parts.append(_rate(digest))
        parts.append("<h2>Where the time went</h2>")
        parts.append(_split(digest))
        parts.append("<h2>Slowest workers (time per item)</h2>")
        parts.append(_workers(digest))
        parts.append("<h2>Slowest slices</h2>")
        parts.append(_slowest(digest))
    elif digest is not None:
        parts.append('<p class="note">No timing records yet: no slice has finished.</p>')
    parts.append(_failures(failures, failures_total))
    return "".join(parts)


def _why(d: dict[str, Any]) -> str:
    lines = [f"<li>{escape(line)}</li>" for line in d["summaryLines"]]
    slow = d.get("slowestWorker")
    head = ""
    if slow and d["stragglers"]:
        head = (
            f'<p id="slowest-worker">Slowest worker: <b>{escape(slow["worker"])}</b> '
            f"({escape(slow['perItemText'])} per item over {slow['items']:,} item(s)); "
            f"{d['stragglers']} straggling slice(s).</p>"
        )
    elif slow:
        head = (
            f'<p id="slowest-worker">Slowest worker: <b>{escape(slow["worker"])}</b> '
            f"({escape(slow['perItemText'])} per item); no stragglers.</p>"
        )
    return f'<div class="why">{head}<ul class="summary">{"".join(lines)}</ul></div>'


def _legend() -> str:
    return (
        '<p class="legend"><span><i class="sw" style="background:#4c9a5f"></i>busy (darker: '
        'busier)</span><span><i class="sw" style="background:#d1453b"></i>a failed slice ran'
        '</span><span><i class="sw" style="background:#111"></i>a straggler ran</span>'
        '<span><i class="sw" style="border:1px dashed #1f2933"></i>a retry ran</span></p>'
    )


def _lanes(d: dict[str, Any]) -> str:
    lanes, bins = d["lanes"], d["bins"]
    lane = 16
    cell = (WIDTH - LABELS - 10) / bins
    height = lane * len(lanes) + 22
    out = [f'<svg id="lanes" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}">']
    for row, info in enumerate(lanes):
        y = row * lane
        classes = "lane straggler" if info["straggler"] else "lane"
        out.append(f'<g class="{classes}" data-worker="{escape(info["worker"])}">')
        label = info["worker"][-32:] + (" (straggler)" if info["straggler"] else "")
        out.append(
            f'<text x="{LABELS - 6}" y="{y + lane - 4}" text-anchor="end">{escape(label)}</text>'
        )
        marks = info["marks"]
        for b, level in enumerate(info["busy"]):
            mark = marks.get(str(b), [])
            if level <= 0 and not mark:
                continue
            colour = (
                COLOURS["failed"]
                if "failed" in mark
                else "#111"
                if "straggler" in mark
                else COLOURS["succeeded"]
            )
            dash = ' stroke="#1f2933" stroke-dasharray="2 1"' if "retry" in mark else ""
            out.append(
                f'<rect x="{LABELS + b * cell:.1f}" y="{y + 1}" width="{max(cell - 0.3, 0.5):.1f}" '
                f'height="{lane - 2}" fill="{colour}" fill-opacity="{0.25 + 0.75 * min(level, 1.0):.2f}"{dash}/>'
            )
        out.append("</g>")
    axis = lane * len(lanes) + 14
    out.append(f'<text x="{LABELS}" y="{axis}">0 s</text>')
    out.append(f'<text x="{WIDTH - 10}" y="{axis}" text-anchor="end">{d["span"]:.2f} s</text>')
    out.append("</svg>")
    return "".join(out)


def _rate(d: dict[str, Any]) -> str:
    points = d["rate"]
    if not points:
        return '<p class="note">No items ran.</p>'
    height, top = 140, max(r for _, r in points) or 1.0
    span = d["span"] or 1.0
    sx = (WIDTH - LABELS - 10) / span
    coords = " ".join(
        f"{LABELS + x * sx:.1f},{height - 20 - r / top * (height - 30):.1f}" for x, r in points
    )
    return (
        f'<svg id="rate" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}">'
        f'<line x1="{LABELS}" x2="{WIDTH - 10}" y1="{height - 20}" y2="{height - 20}" stroke="#9aa5b1"/>'
        f'<text x="{LABELS - 6}" y="14" text-anchor="end">{top:,.1f} items/s</text>'
        f'<text x="{LABELS - 6}" y="{height - 20}" text-anchor="end">0</text>'
        f'<polyline fill="none" stroke="#3e7cb1" stroke-width="2" points="{coords}"/></svg>'
    )


def _split(d: dict[str, Any]) -> str:
    parts = [(k, float(v or 0.0)) for k, v in d["split"].items()]
    total = sum(v for _, v in parts)
    if total <= 0:
        return '<p class="note">No time was recorded.</p>'
    width, x = WIDTH - 10, 0.0
    out = [f'<svg id="split" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="24">']
    for name, value in parts:
        w = value / total * width
        out.append(
            f'<rect data-part="{name}" x="{x:.1f}" y="0" width="{w:.1f}" height="20" '
            f'fill="{SPLIT_COLOURS[name]}"><title>{name}: {seconds_text(value)}</title></rect>'
        )
        x += w
    out.append("</svg>")
    legend = "".join(
        f'<span><i class="sw" style="background:{SPLIT_COLOURS[k]}"></i>{k}: '
        f"{seconds_text(v)} ({100 * v / total:.0f} %)</span>"
        for k, v in parts
    )
    return "".join(out) + f'<p class="legend">{legend}</p>'


def _workers(d: dict[str, Any]) -> str:
    rows = [
        "<table id=workers><tr><th>worker</th><th class=num>slices</th><th class=num>items</th>"
        "<th class=num>busy</th><th class=num>per item</th><th>straggler</th></tr>"
    ]
    for w in d["workers"]:
        rows.append(
            f"<tr><td>{escape(w['worker'])}</td><td class=num>{w['slices']:,}</td>"
            f"<td class=num>{w['items']:,}</td><td class=num>{seconds_text(w['busy'])}</td>"
            f"<td class=num>{seconds_text(w['perItem'])}</td>"
            f"<td>{'yes' if w['straggler'] else ''}</td></tr>"
        )
    return "".join(rows) + "</table>"


def _slowest(d: dict[str, Any]) -> str:
    rows = [
        "<table id=slowest><tr><th>items</th><th>attempt</th><th>worker</th>"
        "<th class=num>per item</th><th>slowest item</th><th>straggler</th></tr>"
    ]
    for s in d["slowest"]:
        item = s["slowestItem"]
        slow = f"{item[0]} ({seconds_text(item[1])})" if item else "-"
        rows.append(
            f"<tr><td>{s['first']}..{s['first'] + s['count'] - 1}</td><td>{s['attempt']}</td>"
            f"<td>{escape(s['worker'])}</td><td class=num>{seconds_text(s['perItem'])}</td>"
            f"<td>{slow}</td><td>{'yes' if s['straggler'] else ''}</td></tr>"
        )
    return "".join(rows) + "</table>"


def _failures(failures: Sequence[Failure], total: int) -> str:
    if not failures:
        return ""
    shown = f" (the first {len(failures)} of {total:,})" if total > len(failures) else ""
    parts = [f"<h2>Failures{shown}</h2>", '<div id="failures">']
    for f in failures:
        attempts = f", {f.attempts} attempt(s)" if f.attempts else ""
        parts.append(
            f'<details class="failure" data-index="{f.index}"><summary>index {f.index}: '
            f"<b>{escape(f.type)}</b>: {escape(f.message[:300])}{attempts}</summary>"
            f"<pre>{escape(f.traceback or '(no traceback recorded)')}</pre></details>"
        )
    parts.append("</div>")
    return "".join(parts)


# -- the pool page ----------------------------------------------------------------------------
_POLL_POOL = """
const api=__API__;async function poll(){try{const r=await fetch(api);if(r.ok){const j=await r.json();
document.getElementById('pool').innerHTML=j.html;}}catch(e){}setTimeout(poll,__POLL__)}
setTimeout(poll,__POLL__);
"""


def pool_section(view: PoolView) -> str:
    row = view.row
    parts = [
        f"<p><b id=busy>{row.busy}</b> busy, <b id=idle>{row.idle}</b> idle, {row.ready} ready "
        f"of {row.replicas} wanted; {row.tasks_served} task(s) served.</p>",
        f'<p class="note">{escape(row.message)}</p>' if row.message else "",
        "<h2>Workers</h2><table id=workers><tr><th>worker</th><th>state</th>"
        "<th class=num>leases</th><th>tasks</th></tr>",
    ]
    for w in view.workers:
        parts.append(
            f'<tr data-worker="{escape(w.name)}"><td>{escape(w.name)}</td><td>{escape(w.state)}</td>'
            f"<td class=num>{w.leases}</td><td>{escape(w.tasks)}</td></tr>"
        )
    parts.append("</table>")
    if not view.workers:
        parts.append('<p class="note">No worker has asked for work since the operator started.</p>')
    parts.append(f"<h2>Tasks it serves</h2><table>{_TASK_HEAD}")
    parts.extend(task_cells(t) for t in view.tasks)
    parts.append("</table>")
    return "".join(parts)


def pool_page(where: str, view: PoolView) -> str:
    api = "/api" + pool_href(view.row)
    body = f"<h1>Worker pool {escape(view.row.name)}</h1><div id=pool>{pool_section(view)}</div>"
    script = _POLL_POOL.replace("__API__", json.dumps(api)).replace("__POLL__", str(POLL_MS))
    return _page(f"kubemap pool {view.row.name}", where, body, script)
