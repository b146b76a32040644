"""Within v1alpha1 the CRDs only grow: every field an existing MapTask or WorkerPool may
hold stays accepted with the same meaning (tests/tools/crd_compat.py; the baseline is
tests/unit/crd_fields_v1alpha1.json). The checker itself is tested on hand-made removals,
narrowings and additions of the real CRDs, so that it cannot pass by seeing nothing."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import crd_compat

MAPTASK = crd_compat.CRD_DIR / "maptask.yaml"
WORKERPOOL = crd_compat.CRD_DIR / "workerpool.yaml"


def test_the_crds_keep_every_field_of_the_baseline() -> None:
    baseline = json.loads(crd_compat.BASELINE.read_text())
    breaking, additive = crd_compat.compare(baseline, crd_compat.current())
    assert not breaking and not additive, crd_compat.report(breaking, additive)


def test_the_baseline_covers_both_crds_field_by_field() -> None:
    baseline = json.loads(crd_compat.BASELINE.read_text())
    assert set(baseline) == {"maptasks.kubemap.io", "workerpools.kubemap.io"}
    task = baseline["maptasks.kubemap.io"]["versions"]["v1alpha1"]["fields"]
    # a field of each kind the walk goes through: property, list item, map value, status
    for path in ("spec.parallelism", "spec.items[]", "spec.template.labels{}", "status.phase"):
        assert path in task, path
    assert task["spec"]["required"] is True
    assert "Function" in task["spec.mode"]["enum"]
    assert len(task) > 50


def _spec(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]  # type: ignore[no-any-return]


def _remove_parallelism(crd: dict[str, Any]) -> None:
    del _spec(crd)["properties"]["parallelism"]


def _narrow_ratio_to_integer(crd: dict[str, Any]) -> None:
    _spec(crd)["properties"]["minSuccessRatio"]["type"] = "integer"


def _drop_an_enum_value(crd: dict[str, Any]) -> None:
    mode = _spec(crd)["properties"]["mode"]
    mode["enum"] = [v for v in mode["enum"] if v != "Function"]


def _require_parallelism(crd: dict[str, Any]) -> None:
    _spec(crd).setdefault("required", []).append("parallelism")


def _new_required_field(crd: dict[str, Any]) -> None:
    _spec(crd)["properties"]["owner"] = {"type": "string"}
    _spec(crd).setdefault("required", []).append("owner")


def _lower_a_maximum(crd: dict[str, Any]) -> None:
    _spec(crd)["properties"]["itemsPerPod"]["maximum"] = 10


def _raise_a_minimum(crd: dict[str, Any]) -> None:
    _spec(crd)["properties"]["parallelism"]["minimum"] = 5


def _add_a_pattern(crd: dict[str, Any]) -> None:
    _spec(crd)["properties"]["files"]["properties"]["version"]["pattern"] = "^v[0-9]+$"


def _add_a_rule(crd: dict[str, Any]) -> None:
    _spec(crd)["x-kubernetes-validations"].append({"rule": "self.parallelism < 100"})


def _change_a_default(crd: dict[str, Any]) -> None:
    _spec(crd)["properties"]["itemsPerPod"]["default"] = 2


def _stop_keeping_unknown_fields(crd: dict[str, Any]) -> None:
    found = _find(_spec(crd), "x-kubernetes-preserve-unknown-fields")
    assert found is not None, "the MapTask CRD keeps unknown fields somewhere below spec"
    del found["x-kubernetes-preserve-unknown-fields"]


def _stop_serving_v1alpha1(crd: dict[str, Any]) -> None:
    crd["spec"]["versions"][0]["served"] = False


def _drop_the_short_name(crd: dict[str, Any]) -> None:
    crd["spec"]["names"]["shortNames"] = []


def _find(node: Any, key: str) -> dict[str, Any] | None:
    if isinstance(node, dict):
        if node.get(key):
            return node
        for value in node.values():
            if (found := _find(value, key)) is not None:
                return found
    elif isinstance(node, list):
        for value in node:
            if (found := _find(value, key)) is not None:
                return found
    return None


def _add_an_optional_field(crd: dict[str, Any]) -> None:
    _spec(crd)["properties"]["priority"] = {"type": "integer", "minimum": 0}


def _add_an_optional_object_with_a_required_child(crd: dict[str, Any]) -> None:
    _spec(crd)["properties"]["notify"] = {
        "type": "object",
        "required": ["url"],
        "properties": {"url": {"type": "string"}},
    }


def _raise_a_maximum(crd: dict[str, Any]) -> None:
    _spec(crd)["properties"]["itemsPerPod"]["maximum"] *= 10


def _add_an_enum_value(crd: dict[str, Any]) -> None:
    _spec(crd)["properties"]["mode"]["enum"].append("Batch")


def _widen_integer_to_number(crd: dict[str, Any]) -> None:
    _spec(crd)["properties"]["parallelism"]["type"] = "number"


BREAKING: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (_remove_parallelism, "spec.parallelism: removed"),
    (_narrow_ratio_to_integer, "spec.minSuccessRatio: type number -> integer"),
    (_drop_an_enum_value, "spec.mode: enum values removed: ['Function']"),
    (_require_parallelism, "spec.parallelism: newly required"),
    (_new_required_field, "spec.owner: new required field"),
    (_lower_a_maximum, "spec.itemsPerPod: maximum 100000 -> 10"),
    (_raise_a_minimum, "spec.parallelism: minimum"),
    (_add_a_pattern, "spec.files.version: pattern None -> '^v[0-9]+$'"),
    (_add_a_rule, "new validation rule 'self.parallelism < 100'"),
    (_change_a_default, "spec.itemsPerPod: default 1 -> 2"),
    (_stop_keeping_unknown_fields, "x-kubernetes-preserve-unknown-fields True -> False"),
    (_stop_serving_v1alpha1, "version v1alpha1 no longer served"),
    (_drop_the_short_name, "short name 'mt' removed"),
]
ADDITIVE: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (_add_an_optional_field, "spec.priority: added"),
    (_add_an_optional_object_with_a_required_child, "spec.notify.url: added"),
    (_raise_a_maximum, "spec.itemsPerPod: maximum 100000 -> 1000000"),
    (_add_an_enum_value, "spec.mode: enum values added: ['Batch']"),
    (_widen_integer_to_number, "spec.parallelism: type integer -> number"),
]


def _changed(change: Callable[[dict[str, Any]], None]) -> tuple[list[str], list[str]]:
    """compare() of the real CRDs against a copy of them with `change` made to MapTask."""
    crd = yaml.safe_load(MAPTASK.read_text())
    baseline = crd_compat.load_crds([MAPTASK, WORKERPOOL])
    edited = copy.deepcopy(crd)
    change(edited)
    now = {**baseline, "maptasks.kubemap.io": crd_compat.describe(edited)}
    return crd_compat.compare(baseline, now)


@pytest.mark.parametrize(("change", "said"), BREAKING, ids=[c.__name__ for c, _ in BREAKING])
def test_the_checker_refuses_a_change_that_breaks_existing_objects(
    change: Callable[[dict[str, Any]], None], said: str
) -> None:
    breaking, _ = _changed(change)
    assert any(said in line for line in breaking), breaking


@pytest.mark.parametrize(("change", "said"), ADDITIVE, ids=[c.__name__ for c, _ in ADDITIVE])
def test_the_checker_lets_an_addition_through_to_the_baseline(
    change: Callable[[dict[str, Any]], None], said: str
) -> None:
    breaking, additive = _changed(change)
    assert breaking == []
    assert any(said in line for line in additive), additive


def test_an_unchanged_crd_has_no_difference() -> None:
    assert _changed(lambda crd: None) == ([], [])


def _checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """crd_compat pointed at a copy of crds/ and of the baseline in tmp_path."""
    crds = tmp_path / "crds"
    crds.mkdir()
    for path in (MAPTASK, WORKERPOOL):
        (crds / path.name).write_text(path.read_text())
    baseline = tmp_path / "crd_fields_v1alpha1.json"
    crd_compat.write_baseline(crd_compat.load_crds(crds.glob("*.yaml")), baseline)
    monkeypatch.setattr(crd_compat, "CRD_DIR", crds)
    monkeypatch.setattr(crd_compat, "BASELINE", baseline)
    monkeypatch.setattr(crd_compat, "ROOT", tmp_path)
    return crds, baseline


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    crd = yaml.safe_load(path.read_text())
    change(crd)
    path.write_text(yaml.safe_dump(crd))


def test_update_records_an_addition_and_the_check_then_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    crds, baseline = _checkout(tmp_path, monkeypatch)
    _edit(crds / "maptask.yaml", _add_an_optional_field)
    assert crd_compat.main([]) == 1
    err = capsys.readouterr().err
    assert "spec.priority: added" in err and "--update" in err  # it says how to refresh
    assert crd_compat.main(["--update"]) == 0
    assert (
        "spec.priority"
        in json.loads(baseline.read_text())["maptasks.kubemap.io"]["versions"]["v1alpha1"]["fields"]
    )
    assert crd_compat.main([]) == 0


def test_update_refuses_while_a_change_breaks_existing_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    crds, baseline = _checkout(tmp_path, monkeypatch)
    before = baseline.read_text()
    _edit(crds / "maptask.yaml", _remove_parallelism)
    assert crd_compat.main(["--update"]) == 1
    assert "spec.parallelism: removed" in capsys.readouterr().err
    assert baseline.read_text() == before  # the baseline did not learn the removal
