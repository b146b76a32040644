"""Markdown reference pages for the MapTask and WorkerPool CRDs and for the chart's values.

    crd_page(Path("crds/maptask.yaml"))          -> markdown: every spec and status field
    values_page(Path("charts/kubemap/values.yaml")) -> markdown: every value, its default

The CRDs are generated from the SDK's pydantic models (`kubemap crd`, `kubemap pool crd`),
so their descriptions and defaults are the models'. values.yaml documents each value with a
helm-docs style `# -- ` comment above it; a documented map (resources, probes) is one value
whose default is the whole map.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# --- CRDs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    path: str
    type: str
    default: Any
    rules: str
    description: str


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "object" if "properties" in schema else "any")
    if kind == "array":
        return f"list of {_type_of(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map of {_type_of(schema['additionalProperties'])}"
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    return str(kind)


def _rules(schema: dict[str, Any]) -> str:
    parts = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    for key, word in (("minimum", "≥"), ("maximum", "≤")):
        if key in schema:
            parts.append(
                f"{word} {schema[key]:g}"
                if isinstance(schema[key], float)
                else f"{word} {schema[key]}"
            )
    for key, word in (("maxLength", "at most {} characters"), ("maxItems", "at most {} items")):
        if key in schema:
            parts.append(word.format(schema[key]))
    if "pattern" in schema:
        parts.append(f"matches `{schema['pattern']}`")
    return ", ".join(parts)


def crd_fields(schema: dict[str, Any], prefix: str) -> Iterator[Field]:
    """Every field below `schema`, depth first, with its dotted path (`spec.store.url`)."""
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{name}"
        yield Field(
            path,
            _type_of(sub),
            sub.get("default"),
            _rules(sub),
            " ".join(str(sub.get("description", "")).split()),
        )
        yield from crd_fields(sub, path)
        items = sub.get("items", {})
        if items.get("properties"):
            yield from crd_fields(items, f"{path}[]")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: Any) -> str:
    if value is None:
        return ""
    return f"`{json.dumps(value)}`"


def crd_page(path: Path) -> str:
    crd = yaml.safe_load(path.read_text())
    spec = crd["spec"]
    kind = spec["names"]["kind"]
    [version] = [v for v in spec["versions"] if v.get("storage")]
    schema = version["schema"]["openAPIV3Schema"]
    group = spec["group"]
    short = ", ".join(f"`{s}`" for s in spec["names"].get("shortNames", []))
    lines = [
        f"# {kind} fields",
        "",
        f"`{group}/{version['name']}`, kind `{kind}`, short name {short}, "
        f"{spec['scope'].lower()}. {schema.get('description', '')}",
        "",
        f"Generated at build time from [`{path.as_posix()}`](../../{path.as_posix()}), which "
        f"`kubemap {'pool ' if kind == 'WorkerPool' else ''}crd` generates from the SDK's "
        "pydantic models: the descriptions and defaults below are the ones the API server "
        "applies.",
        "",
    ]
    for part in ("spec", "status"):
        section = schema["properties"].get(part)
        if not section:
            continue
        lines += [f"## {part}", "", " ".join(str(section.get("description", "")).split()), ""]
        lines += ["| field | type | default | rules | description |", "|---|---|---|---|---|"]
        for field in crd_fields(section, part):
            lines.append(
                f"| `{field.path}` | {_cell(field.type)} | {_cell(_default(field.default))} | "
                f"{_cell(field.rules)} | {_cell(field.description)} |"
            )
        lines.append("")
        checks = section.get("x-kubernetes-validations", [])
        if checks:
            lines += ["Checked by the API server when the object is written:", ""]
            lines += [f"- {_cell(c['message'])}" for c in checks]
            lines.append("")
    columns = version.get("additionalPrinterColumns", [])
    if columns:
        lines += [f"## `kubectl get {spec['names']['plural']}` columns", ""]
        lines += ["| column | from |", "|---|---|"]
        lines += [f"| {c['name']} | `{c['jsonPath']}` |" for c in columns]
        lines.append("")
    return "\n".join(lines)


# --- chart values -------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    path: str
    default: Any
    description: str


_KEY = re.compile(r"^(\s*)([A-Za-z_][\w-]*):(.*)$")


def chart_values(text: str) -> tuple[list[Value], dict[str, str]]:
    """The documented values of a values.yaml, in file order, and the plain comment above
    each top-level section (its introduction)."""
    data = yaml.safe_load(text)
    values: list[Value] = []
    sections: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    doc: list[str] | None = None  # the `# -- ` comment being read
    plain: list[str] = []  # other comment lines just above a key
    documented: list[str] = []  # paths whose subtree is one value
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# -- "):
            doc, plain = [stripped[5:]], []
            continue
        if stripped.startswith("#"):
            (doc if doc is not None else plain).append(stripped.lstrip("#").strip())
            continue
        if not stripped:
            doc, plain = None, []
            continue
        match = _KEY.match(line)
        if not match or line.lstrip().startswith("-"):
            continue
        indent, key, rest = len(match[1]), match[2], match[3].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), key])
        stack.append((indent, key))
        inside = any(path.startswith(p + ".") for p in documented)
        if doc is not None:
            # a documented map is one value (its default the whole map); a child of it with
            # its own comment (a probe's fields) is listed as well
            values.append(Value(path, _lookup(data, path), " ".join(doc)))
            if not rest:
                documented.append(path)
        elif not inside and rest and not rest.startswith("#"):
            values.append(Value(path, _lookup(data, path), ""))  # a value without its comment
        if indent == 0 and plain and not rest:
            sections[key] = " ".join(plain)
        doc, plain = None, []
    return values, sections


def _lookup(data: Any, path: str) -> Any:
    for key in path.split("."):
        data = data[key]
    return data


def leaf_paths(data: Any, prefix: str = "") -> Iterator[str]:
    """Every scalar's (or empty collection's) dotted path in a parsed values file."""
    if isinstance(data, dict) and data:
        for key, sub in data.items():
            yield from leaf_paths(sub, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def values_page(path: Path) -> str:
    values, sections = chart_values(path.read_text())
    lines = [
        "# Chart values",
        "",
        f"Every value of the Helm chart `charts/kubemap`, generated at build time from "
        f"[`{path.as_posix()}`](../../{path.as_posix()}) (its `# -- ` comments). "
        "`values.schema.json` rejects unknown keys at every level, so a misspelt `--set` fails "
        "`helm install` with the key named. Set them with `--set key=value` or `-f my-values.yaml`.",
        "",
    ]

    def group(value: Value) -> str:
        return value.path.split(".")[0] if "." in value.path else "General"

    order = {"General": -1}
    for value in values:
        order.setdefault(group(value), len(order))
    current = None
    for value in sorted(values, key=lambda v: order[group(v)]):  # stable: file order within
        top = group(value)
        if top != current:
            current = top
            lines += ["", f"## `{top}`" if top != "General" else "## General", ""]
            if top in sections:
                lines += [sections[top], ""]
            lines += ["| value | default | description |", "|---|---|---|"]
        default = value.default
        if isinstance(default, dict | list) and default:
            shown = "<code>" + _cell(json.dumps(default)).replace("`", "") + "</code>"
        else:
            shown = f"`{json.dumps(default)}`"
        lines.append(f"| `{value.path}` | {shown} | {_cell(value.description)} |")
    lines.append("")
    return "\n".join(lines)
