"""crds/maptask.yaml is generated from the models; it must not drift and must stay structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubemap.resources.crds import IMMUTABLE, build_crd, render_crd

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "maptask.yaml"


def walk(node: dict[str, Any], path: str = ""):  # type: ignore[no-untyped-def]
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], path + "[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], path + "{}")


def schema() -> dict[str, Any]:
    version = build_crd()["spec"]["versions"][0]
    return dict(version["schema"]["openAPIV3Schema"])


def test_file_matches_the_models() -> None:
    assert CRD_FILE.read_text() == render_crd(), (
        "crds/maptask.yaml drifted: run `kubemap crd > crds/maptask.yaml`"
    )


def test_schema_is_structural_and_bounded() -> None:
    for path, node in walk(schema()):
        assert not {"$ref", "anyOf", "allOf", "oneOf", "$defs", "title"} & node.keys(), path
        if path in ("", ".apiVersion", ".kind", ".metadata"):
            continue
        kind = node.get("type")
        assert kind or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        if kind == "string":
            assert "maxLength" in node or "enum" in node, f"{path} has no maxLength"
        if kind == "array":
            assert "maxItems" in node, f"{path} has no maxItems"
        if kind == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path} map has no maxProperties"


def test_rules_printer_columns_and_names() -> None:
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == "maptasks.kubemap.io"
    assert crd["spec"]["names"]["shortNames"] == ["mt"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Succeeded",
        "Total",
        "Failed",
        "Active",
        "Not-Run",
        "Reason",
        "Items/s",
        "P95",
        "Slowest",
        "Age",
    ]
    rules = schema()["properties"]["spec"]["x-kubernetes-validations"]
    text = " ".join(r["rule"] for r in rules)
    for field in IMMUTABLE:
        assert f"self.{field} == oldSelf.{field}" in text
    assert all(r["message"] for r in rules)
    env = schema()["properties"]["spec"]["properties"]["template"]["properties"]["env"]
    assert env["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert (
        "TooManyFailedRanges"
        in schema()["properties"]["status"]["properties"]["failedIndexes"]["description"]
    )


def test_yaml_parses() -> None:
    assert yaml.safe_load(CRD_FILE.read_text())["kind"] == "CustomResourceDefinition"


def test_cli_prints_and_checks_the_crd() -> None:
    from click.testing import CliRunner
    from kubemap.cli.main import main

    printed = CliRunner().invoke(main, ["crd"])
    assert printed.exit_code == 0 and printed.stdout == render_crd()
    checked = CliRunner().invoke(main, ["crd", "--check"])
    assert checked.exit_code == 0 and "up to date" in checked.stdout
