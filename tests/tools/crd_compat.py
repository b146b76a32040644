"""Within an API version a CRD may only grow: every field an existing object may hold must
stay accepted, with the same meaning (issue 18, upgrade safety).

The baseline (tests/unit/crd_fields_v1alpha1.json) lists every schema path of every served
version of the CRDs in crds/ with what constrains it: type, enum, required-ness, bounds,
pattern, format, default, CEL rules, pruning flags. `compare` sorts each difference between
the baseline and the CRDs of today into

- breaking: an existing object could be refused, pruned or read differently (a removed
  field or version, a narrowed type, a removed enum value, a newly required field, a
  tighter bound or pattern, a new CEL rule, a changed default, ...);
- additive: nothing stored before is affected (a new optional field, a wider bound, a new
  enum value); the baseline is refreshed to hold it:

    .venv/bin/python tests/tools/crd_compat.py --update

which refuses while a breaking difference remains: make the change in a new API version
(v1beta1, with a conversion) instead, or, if it truly breaks nothing, say why in the
commit and edit the baseline by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
BASELINE = ROOT / "tests" / "unit" / "crd_fields_v1alpha1.json"
UPDATE = ".venv/bin/python tests/tools/crd_compat.py --update"

# What each schema node keeps in the baseline, beyond its children.
COPIED = (
    "type",
    "format",
    "pattern",
    "nullable",
    "default",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "uniqueItems",
)
UPPER = ("maximum", "maxLength", "maxItems", "maxProperties")  # lowering one narrows
LOWER = ("minimum", "minLength", "minItems", "minProperties")  # raising one narrows
COMBINERS = ("anyOf", "oneOf", "allOf", "not")
# Keys whose loss widens what is accepted; whose gain or change narrows it.
RESTRICTIONS = ("format", "pattern", "multipleOf")
# Flags whose loss drops or refuses what objects hold (pruning, int-or-string...).
KEEPERS = (
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
)


# -- the baseline's view of a CRD ----------------------------------------------------------
def fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """path -> what constrains it, for every node of an openAPIV3Schema. Paths: "spec.items"
    for a property, "[]" for a list's items, "{}" for a map's values; "" is the root."""
    out: dict[str, dict[str, Any]] = {}
    _walk(schema, "", False, out)
    return out


def _walk(node: dict[str, Any], path: str, required: bool, out: dict[str, dict[str, Any]]) -> None:
    info: dict[str, Any] = {"required": required}
    for key in COPIED + UPPER + LOWER:
        if key in node:
            info[key] = node[key]
    if "enum" in node:
        info["enum"] = sorted(node["enum"], key=json.dumps)
    rules = [v.get("rule", "") for v in node.get("x-kubernetes-validations") or []]
    if rules:
        info["rules"] = sorted(rules)
    for key in COMBINERS:
        if key in node:  # kept whole: any change to one is judged by hand
            info[key] = json.dumps(node[key], sort_keys=True)
    if node.get("additionalProperties") is True:
        info["additionalProperties"] = True
    out[path] = info
    needed = set(node.get("required") or ())
    for name, child in sorted((node.get("properties") or {}).items()):
        _walk(child, f"{path}.{name}" if path else name, name in needed, out)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}[]", False, out)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}{{}}", False, out)


def describe(crd: dict[str, Any]) -> dict[str, Any]:
    spec = crd["spec"]
    names = spec["names"]
    return {
        "group": spec["group"],
        "scope": spec["scope"],
        "kind": names["kind"],
        "plural": names["plural"],
        "singular": names.get("singular", ""),
        "shortNames": sorted(names.get("shortNames") or []),
        "versions": {
            version["name"]: {
                "served": bool(version.get("served")),
                "storage": bool(version.get("storage")),
                "subresources": sorted((version.get("subresources") or {}).keys()),
                "fields": fields(version["schema"]["openAPIV3Schema"]),
            }
            for version in spec["versions"]
            if version.get("served")
        },
    }


def load_crds(paths: Iterable[Path]) -> dict[str, Any]:
    """CRD name -> describe(), for every CustomResourceDefinition in these YAML files."""
    out: dict[str, Any] = {}
    for path in sorted(paths):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                out[doc["metadata"]["name"]] = describe(doc)
    return out


def current() -> dict[str, Any]:
    return load_crds(CRD_DIR.glob("*.yaml"))


# -- comparing ------------------------------------------------------------------------------
def _parent(path: str) -> str | None:
    if not path:
        return None
    match = re.match(r"^(.*?)(\.[^.\[\]{}]+|\[\]|\{\})$", path)
    return match[1] if match else ""


def _type_change(old: Any, new: Any) -> bool | None:
    """True: widened (integer -> number), False: narrowed or changed, None: same."""
    if old == new:
        return None
    return bool(old == "integer" and new == "number")


def compare_field(
    where: str, old: dict[str, Any], new: dict[str, Any]
) -> Iterator[tuple[bool, str]]:
    """(breaking, message) for each difference of one field."""
    widened = _type_change(old.get("type"), new.get("type"))
    if widened is not None:
        yield not widened, f"{where}: type {old.get('type')} -> {new.get('type')}"
    if not old["required"] and new["required"]:
        yield True, f"{where}: newly required (existing objects without it are refused)"
    elif old["required"] and not new["required"]:
        yield False, f"{where}: no longer required"
    if "enum" in old or "enum" in new:
        before, after = old.get("enum"), new.get("enum")
        if after is None:
            yield False, f"{where}: enum lifted"
        elif before is None:
            yield True, f"{where}: enum {after} added (values outside it are refused)"
        else:
            gone = [v for v in before if v not in after]
            added = [v for v in after if v not in before]
            if gone:
                yield True, f"{where}: enum values removed: {gone}"
            if added:
                yield False, f"{where}: enum values added: {added}"
    for key in UPPER + LOWER:
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        tighter = after is not None and (
            before is None or (after < before if key in UPPER else after > before)
        )
        yield tighter, f"{where}: {key} {before} -> {after}"
    for key in RESTRICTIONS:
        before, after = old.get(key), new.get(key)
        if before != after:
            yield after is not None, f"{where}: {key} {before!r} -> {after!r}"
    for key in (*KEEPERS, "additionalProperties"):
        before, after = bool(old.get(key)), bool(new.get(key))
        if before != after:
            yield before, f"{where}: {key} {before} -> {after}"
    for key in ("exclusiveMinimum", "exclusiveMaximum", "uniqueItems"):
        before, after = bool(old.get(key)), bool(new.get(key))
        if before != after:
            yield after, f"{where}: {key} {before} -> {after}"
    for key in (
        "default",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        *COMBINERS,
    ):
        if old.get(key) != new.get(key):
            yield True, f"{where}: {key} {old.get(key)!r} -> {new.get(key)!r}"
    before_rules, after_rules = set(old.get("rules") or ()), set(new.get("rules") or ())
    for rule in sorted(after_rules - before_rules):
        yield True, f"{where}: new validation rule {rule!r} (existing objects may fail it)"
    for rule in sorted(before_rules - after_rules):
        yield False, f"{where}: validation rule removed {rule!r}"


def compare(baseline: dict[str, Any], now: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(breaking, additive) differences from the baseline to the CRDs of today."""
    breaking: list[str] = []
    additive: list[str] = []
    for name, old in sorted(baseline.items()):
        new = now.get(name)
        if new is None:
            breaking.append(f"{name}: the CRD is gone")
            continue
        for key in ("group", "scope", "kind", "plural", "singular"):
            if old[key] != new[key]:
                breaking.append(f"{name}: {key} {old[key]!r} -> {new[key]!r}")
        for short in sorted(set(old["shortNames"]) - set(new["shortNames"])):
            breaking.append(f"{name}: short name {short!r} removed")
        for short in sorted(set(new["shortNames"]) - set(old["shortNames"])):
            additive.append(f"{name}: short name {short!r} added")
        for version, was in sorted(old["versions"].items()):
            now_version = new["versions"].get(version)
            if now_version is None:
                breaking.append(f"{name}: version {version} no longer served")
                continue
            for sub in sorted(set(was["subresources"]) - set(now_version["subresources"])):
                breaking.append(f"{name} {version}: subresource {sub} removed")
            _compare_fields(
                f"{name} {version}", was["fields"], now_version["fields"], breaking, additive
            )
        for version in sorted(set(new["versions"]) - set(old["versions"])):
            additive.append(f"{name}: version {version} added")
    for name in sorted(set(now) - set(baseline)):
        additive.append(f"{name}: new CRD")
    return breaking, additive


def _compare_fields(
    where: str,
    old: dict[str, dict[str, Any]],
    new: dict[str, dict[str, Any]],
    breaking: list[str],
    additive: list[str],
) -> None:
    for path, was in sorted(old.items()):
        label = f"{where} {path or '(root)'}"
        if path not in new:
            breaking.append(f"{label}: removed (objects holding it lose it or are refused)")
            continue
        for bad, message in compare_field(label, was, new[path]):
            (breaking if bad else additive).append(message)
    for path, info in sorted(new.items()):
        if path in old:
            continue
        parent = _parent(path)
        if info["required"] and parent in old:
            breaking.append(f"{where} {path}: new required field (existing objects lack it)")
        else:
            additive.append(f"{where} {path}: added")


def report(breaking: list[str], additive: list[str]) -> str:
    lines = []
    if breaking:
        lines.append(
            f"{len(breaking)} change(s) to the CRDs would break objects that exist (additive "
            "only within v1alpha1: put such a change in a new API version with a conversion):"
        )
        lines += [f"  {line}" for line in breaking]
    if additive:
        lines.append(
            f"{len(additive)} additive change(s) not in the baseline yet: refresh it with "
            f"`{UPDATE}` and commit {BASELINE.relative_to(ROOT)}:"
        )
        lines += [f"  {line}" for line in additive]
    return "\n".join(lines)


def write_baseline(data: dict[str, Any], path: Path | None = None) -> None:
    """JSON with one line per field, so that a refresh's diff shows each field it adds."""
    path = path or BASELINE
    marker = "@@FIELDS@@"
    rows: list[str] = []
    shaped: dict[str, Any] = {}
    for name, crd in data.items():
        versions = {}
        for version, info in crd["versions"].items():
            rows.append(
                ",\n".join(
                    f"          {json.dumps(path)}: {json.dumps(field, sort_keys=True)}"
                    for path, field in sorted(info["fields"].items())
                )
            )
            versions[version] = {**info, "fields": f"{marker}{len(rows) - 1}"}
        shaped[name] = {**crd, "versions": versions}
    text = json.dumps(shaped, indent=2, sort_keys=True)
    for n, row in enumerate(rows):
        text = text.replace(f'"{marker}{n}"', "{\n" + row + "\n        }")
    assert json.loads(text) == json.loads(json.dumps(data))  # the layout changed nothing
    path.write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--update", action="store_true", help="write the baseline (refused on breaking changes)"
    )
    args = parser.parse_args(argv)
    now = current()
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    breaking, additive = compare(baseline, now)
    if breaking:
        print(report(breaking, additive), file=sys.stderr)
        return 1
    if args.update:
        write_baseline(now, BASELINE)
        print(f"{BASELINE.relative_to(ROOT)}: {len(additive)} additive change(s) recorded")
        return 0
    if additive:
        print(report(breaking, additive), file=sys.stderr)
        return 1
    print("the CRDs keep every field of the baseline; nothing to record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
