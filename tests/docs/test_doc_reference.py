"""The generated references are complete: every public name of the SDK (kubemap.__all__, and
the public methods of its classes) is on the API page with a docstring that names each of
its parameters; every CLI command and option (tests/unit/public_api.json) is on the CLI page;
every MapTask and WorkerPool field and every chart value is on its generated page."""

from __future__ import annotations

import inspect
import json
import re
import sys
from html import unescape
from pathlib import Path
from typing import Any

import kubemap
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "docs"))
from docsgen.reference import chart_values, crd_fields, leaf_paths  # noqa: E402

PUBLIC_API = json.loads((REPO / "tests" / "unit" / "public_api.json").read_text())
# Names whose docstring cannot say more than their type does.
NOT_CALLABLE = {"__version__"}
# Known gaps, each in a file outside the docs' files; listed so that the test fails when one
# is mended (then remove it here) and when a new gap appears.
KNOWN_GAPS = {
    # sdk/kubemap/task/inputfiles.py: File's docstring names key and tag only
    "File: parameter 'url' not described",
    "File: parameter 'size' not described",
    "File: parameter 'root' not described",
}


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text()


def ids(html: str) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', html))


def text(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html))


def public_members(cls: type) -> dict[str, Any]:
    """Methods and properties a user calls, defined by kubemap (not by object, Exception or
    concurrent.futures, whose own docs cover them)."""
    found = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("kubemap"):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") or name in found or name.startswith("model_"):
                continue
            if callable(member) or isinstance(member, property | classmethod | staticmethod):
                found[name] = member
    return found


def undocumented_parameters(fn: Any, doc: str) -> list[str]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    missing = []
    for name, parameter in signature.parameters.items():
        if name in ("self", "cls") or parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if not re.search(rf"\b{re.escape(name)}\b", doc):
            missing.append(name)
    return missing


def test_every_public_name_is_on_the_api_page(site: Path) -> None:
    found = ids(page(site, "reference/python"))
    missing = []
    for name in kubemap.__all__:
        if not any(i == f"kubemap.{name}" or i.endswith(f".{name}") for i in found):
            missing.append(name)
        obj = getattr(kubemap, name)
        if inspect.isclass(obj):
            for member in public_members(obj):
                if not any(i.endswith(f"{obj.__name__}.{member}") for i in found):
                    missing.append(f"{name}.{member}")
    assert missing == []


def test_every_public_name_has_a_docstring_naming_its_parameters() -> None:
    problems = []
    for name in kubemap.__all__:
        if name in NOT_CALLABLE:
            continue
        obj = getattr(kubemap, name)
        doc = inspect.getdoc(obj) or ""
        if not doc.strip():
            problems.append(f"{name}: no docstring")
        targets = [(name, obj, doc)]
        if inspect.isclass(obj):
            init_doc = doc + "\n" + (inspect.getdoc(obj.__init__) or "")
            if "__init__" in vars(obj) and not getattr(obj, "__pydantic_fields__", None):
                targets = [(name, obj.__init__, init_doc)]
            else:
                targets = []
            for member_name, member in public_members(obj).items():
                function = member.fget if isinstance(member, property) else member
                function = getattr(function, "__func__", function)
                member_doc = inspect.getdoc(function) or ""
                if not member_doc.strip():
                    problems.append(f"{name}.{member_name}: no docstring")
                targets.append((f"{name}.{member_name}", function, member_doc))
        for label, function, text_ in targets:
            for parameter in undocumented_parameters(function, text_):
                problems.append(f"{label}: parameter {parameter!r} not described")
    assert sorted(set(problems) - KNOWN_GAPS) == []
    assert sorted(KNOWN_GAPS - set(problems)) == [], "mended: remove them from KNOWN_GAPS"


def test_every_run_option_is_described_where_the_options_are_taken() -> None:
    doc = inspect.getdoc(kubemap.submit) or ""
    missing = [f for f in kubemap.RunOptions.model_fields if not re.search(rf"\b{f}\b", doc)]
    assert missing == [], "options kubemap.submit's docstring does not describe"


def _cli_params(tree: dict[str, Any], path: str = "kubemap") -> list[tuple[str, str]]:
    found = [(path, p.split(":")[0]) for p in tree.get("params", [])]
    for name, sub in tree.get("commands", {}).items():
        found.append((path, name))
        found += _cli_params(sub, f"{path} {name}")
    return found


def test_every_cli_command_and_option_is_on_the_cli_page(site: Path) -> None:
    shown = text(page(site, "reference/cli"))
    missing = []
    for command, param in _cli_params(PUBLIC_API["cli"]):
        if command not in shown:
            missing.append(command)
        for spelling in param.split("/"):
            # an option by its spelling; an argument by its name, which click shows upper-case
            if spelling not in shown and spelling.upper() not in shown:
                missing.append(f"{command} {spelling}")
    assert sorted(set(missing)) == []


@pytest.mark.parametrize("crd", ["maptask", "workerpool"])
def test_every_crd_field_is_on_its_page(site: Path, crd: str) -> None:
    schema = yaml.safe_load((REPO / "crds" / f"{crd}.yaml").read_text())
    [version] = schema["spec"]["versions"]
    root = version["schema"]["openAPIV3Schema"]["properties"]
    shown = text(page(site, f"reference/{crd}"))
    paths = [f.path for part in ("spec", "status") for f in crd_fields(root[part], part)]
    assert len(paths) >= 20
    assert [p for p in paths if p not in shown] == []


def test_every_chart_value_is_on_its_page(site: Path) -> None:
    source = (REPO / "charts" / "kubemap" / "values.yaml").read_text()
    values, _ = chart_values(source)
    rows = {v.path for v in values}
    shown = text(page(site, "reference/chart-values"))
    leaves = list(leaf_paths(yaml.safe_load(source)))
    assert len(leaves) > 50
    uncovered = [
        leaf for leaf in leaves if not any(leaf == r or leaf.startswith(r + ".") for r in rows)
    ]
    assert uncovered == []
    assert [r for r in rows if r not in shown] == []
    assert [v.path for v in values if not v.description] == [], "values without a # -- comment"
