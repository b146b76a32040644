"""Check that every PromQL query of the chart's Grafana dashboard names metrics that exist.

Queries are parsed with `promql-parser` (Prometheus' grammar, Rust, on PyPI) after Grafana's
variables are replaced by values Prometheus would see; the metric names they select are then
looked up in a scrape of the operator, parsed with prometheus_client's exposition parser. A
family is exposed under its sample names: a counter as <name>_total (and _created), a
histogram as _bucket, _sum, _count, a gauge as itself. A family with no samples yet still
has its HELP/TYPE lines, so a series that exists but was not touched counts as existing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "charts" / "kubemap" / "dashboards" / "kubemap.json"
)
# The only labels kubemap's series carry: each has a bounded set of values (never a task's
# name or an index). Checked against the registry (unit) and a real scrape (e2e).
BOUNDED_LABELS = frozenset({
    "namespace", "pool", "phase", "failure_class", "kind", "state", "verb", "resource", "code",
    "le",  # a histogram's bucket bound
    # kubemap_rate_limit: target is apiserver|dispatch|store, scope one pool (ns/pool) or one
    # store (endpoint/bucket): as many as pools and stores, never tasks
    "target", "scope",
})  # fmt: skip
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created", ""),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, expr) of every query target and templating query of the dashboard."""
    board = json.loads(path.read_text())
    out: list[tuple[str, str]] = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels") or [])

    for panel in panels(board.get("panels") or []):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                out.append((str(panel.get("title")), str(target["expr"])))
    for variable in (board.get("templating") or {}).get("list") or []:
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else None
        if variable.get("type") == "query" and text:
            out.append((f"variable {variable['name']}", label_values_query(str(text))))
    return out


def label_values_query(text: str) -> str:
    """Grafana's label_values(metric, label) as the selector it reads: `metric`."""
    text = text.strip()
    if text.startswith("label_values(") and text.endswith(")"):
        args = text[len("label_values(") : -1].rsplit(",", 1)
        return args[0].strip() if len(args) == 2 else "vector(0)"
    return text


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    # template variables left ($namespace) stand inside label matchers' strings: any value
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names the query selects (raises ValueError if it does not parse)."""
    tree = promql_parser.parse(substitute(expr))
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)
            return
        if isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector)
            return
        for child in ("expr", "lhs", "rhs", "param"):
            if hasattr(node, child):
                walk(getattr(node, child))
        for arg in getattr(node, "args", None) or []:
            walk(arg)

    walk(tree)
    return names


def exposed_names(scrape: str) -> set[str]:
    """Every sample name a scrape exposes or declares (families with no samples included)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(scrape):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def missing(scrape: str, path: Path = DASHBOARD) -> list[str]:
    """'panel: metric' for every metric a dashboard query names that the scrape lacks."""
    exposed = exposed_names(scrape)
    return [
        f"{title}: {name}"
        for title, expr in dashboard_queries(path)
        for name in sorted(metric_names(expr))
        if name not in exposed
    ]
