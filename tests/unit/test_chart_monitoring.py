"""The chart's optional PodMonitor and Grafana dashboard, and the dashboard's PromQL: each query
parses and names only metrics the operator exposes (a scrape of its registry after driving the
instrumented code; tests/e2e/test_metrics_cluster.py checks the same against a real operator)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import chartkit as ck
import promqlcheck

MONITORING = {
    "metrics.podMonitor.enabled": "true",
    "metrics.grafanaDashboard.enabled": "true",
    "metrics.podMonitor.labels.release": "prom",
}


def test_pod_monitor_selects_the_operator_pod_and_its_metrics_port() -> None:
    lint = ck.run([ck.helm_bin(), "lint", "--strict", str(ck.CHART), *ck.set_args(MONITORING)])
    assert lint.returncode == 0, lint.stdout + lint.stderr
    objs = ck.render(MONITORING)
    monitor = ck.one(objs, "PodMonitor")
    pod = ck.one(objs, "Deployment")["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_dashboard_config_map_holds_the_dashboard_with_the_sidecar_label() -> None:
    objs = ck.render(MONITORING | {"metrics.grafanaDashboard.namespace": "monitoring"})
    maps = [
        o for o in ck.by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")
    ]
    assert len(maps) == 1
    assert maps[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert maps[0]["metadata"]["namespace"] == "monitoring"
    shipped = json.loads(maps[0]["data"]["kubemap.json"])
    assert shipped == json.loads(promqlcheck.DASHBOARD.read_text())


def test_both_are_off_by_default() -> None:
    objs = ck.render()
    assert not ck.by_kind(objs, "PodMonitor")
    assert not [
        o for o in ck.by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")
    ]


@pytest.mark.parametrize(("title", "expr"), promqlcheck.dashboard_queries())
def test_every_dashboard_query_parses(title: str, expr: str) -> None:
    assert promqlcheck.metric_names(expr), f"{title}: {expr} names no metric"


def test_every_dashboard_query_names_metrics_the_registry_exposes() -> None:
    from kubemap_operator import metrics

    scrape = generate_latest(metrics.REGISTRY).decode()
    assert promqlcheck.missing(scrape) == []
    every = {n for _, e in promqlcheck.dashboard_queries() for n in promqlcheck.metric_names(e)}
    assert len(every) >= 15  # the dashboard shows each of the series the guide lists


def test_the_check_catches_a_misspelt_metric(tmp_path: Path) -> None:
    board = json.loads(promqlcheck.DASHBOARD.read_text())
    board["panels"][1]["targets"][0]["expr"] = "sum(kubemap_task_by_phase)"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(board))
    from kubemap_operator import metrics

    scrape = generate_latest(metrics.REGISTRY).decode()
    assert promqlcheck.missing(scrape, path) == [
        f"{board['panels'][1]['title']}: kubemap_task_by_phase"
    ]


def test_the_guides_example_alerts_parse_and_name_metrics_that_exist() -> None:
    import re

    import yaml
    from kubemap_operator import metrics

    guide = (promqlcheck.DASHBOARD.parents[3] / "docs" / "guides" / "metrics.md").read_text()
    rule = yaml.safe_load(re.search(r"```yaml\n(.*?)```", guide, re.S).group(1))  # type: ignore[union-attr]
    exposed = promqlcheck.exposed_names(generate_latest(metrics.REGISTRY).decode())
    rules = rule["spec"]["groups"][0]["rules"]
    assert len(rules) >= 5
    for each in rules:
        names = promqlcheck.metric_names(each["expr"])
        assert names and names <= exposed, (each["alert"], names - exposed)
