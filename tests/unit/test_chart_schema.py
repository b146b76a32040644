"""The chart's values schema: a typo or a wrong type fails helm with a message naming it,
every object in values.schema.json is closed, and every value is documented.
"""

from __future__ import annotations

import json
import re
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


KUBERNETES_TYPED = ("resources", "securityContext", "podSecurityContext")


def test_every_value_is_in_the_schema_and_commented() -> None:
    text = (ck.CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    schema = json.loads((ck.CHART / "values.schema.json").read_text())
    for top in schema["properties"]:
        if top != "global":
            assert top in values, f"schema has {top} but values.yaml does not document it"
    lines = text.splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        if any(part in KUBERNETES_TYPED for part in path[:-1]):
            continue  # inside a Kubernetes type, documented by its parent
        if not lines[i - 1].strip().startswith("#"):
            undocumented.append(".".join(path))
    assert undocumented == [], f"values.yaml keys without a comment above: {undocumented}"
