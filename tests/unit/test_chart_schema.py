"""The chart's values schema: a typo or a wrong type fails helm with a message naming it,
every object in values.schema.json is closed, and every value is documented.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import chartkit as ck

NAMESPACE = "kubemap-system"


# --- the values schema ------------------------------------------------------------------------

TYPOS = [
    ("operater.image", "x", "'operater'"),
    ("replicaCount", "two", "/replicaCount"),
    ("replicaCount", "2", "/replicaCount"),
    ("image.repo", "x", "'repo'"),
    ("operator.watchNamespace", "{a}", "'watchNamespace'"),
    ("operator.logLevel", "LOUD", "/operator/logLevel"),
    ("rbac.scope", "Cluster", "/rbac/scope"),
    ("s3.endpoint", "seaweedfs:8333", "/s3/endpoint"),
    ("worker.securityContext.runAsNonroot", "true", "'runAsNonroot'"),
    ("metrics.port", "0", "/metrics/port"),
    ("operator.watchNamespaces", "{Bad_NS}", "/operator/watchNamespaces/0"),
]


@pytest.mark.parametrize(("key", "value", "named"), TYPOS)
def test_schema_rejects_typos_naming_the_key(key: str, value: str, named: str) -> None:
    sets = {key: value}
    template = ck.helm_template(sets)
    assert template.returncode != 0
    assert named in template.stderr, template.stderr
    lint = ck.run([ck.helm_bin(), "lint", str(ck.CHART), *ck.set_args(sets)])
    assert lint.returncode != 0 and named in lint.stdout + lint.stderr
    install = ck.run(
        [
            ck.helm_bin(),
            "install",
            "kubemap",
            str(ck.CHART),
            "--dry-run=client",
            "--namespace",
            NAMESPACE,
            *ck.set_args(sets),
        ]
    )
    assert install.returncode != 0 and named in install.stderr, install.stderr


def _object_nodes(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append((path, node))
        for key, child in node.items():
            found += _object_nodes(child, f"{path}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found += _object_nodes(child, f"{path}/{i}")
    return found


def test_schema_closes_every_object() -> None:
    schema = json.loads((ck.CHART / "values.schema.json").read_text())
    nodes = _object_nodes(schema)
    assert len(nodes) > 30
    for path, node in nodes:
        if path == "/properties/global":  # Helm's globals from a parent chart: free-form by design
            continue
        assert "additionalProperties" in node, f"{path} does not set additionalProperties"
        if "properties" in node:
            assert node["additionalProperties"] is False, f"{path} has properties but is open"


def test_every_value_is_in_the_schema_and_commented() -> None:
    text = (ck.CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    schema = json.loads((ck.CHART / "values.schema.json").read_text())
    for top in schema["properties"]:
        if top != "global":
            assert top in values, f"schema has {top} but values.yaml does not document it"
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped and not stripped.startswith(("#", "-")) and ":" in stripped and indent <= 2:
            above = lines[i - 1].strip() if i else ""
            opens_block = stripped.endswith(":")
            assert above.startswith("#") or opens_block, (
                f"values.yaml line {i + 1} has no comment: {line}"
            )
