"""Bad MapTask specs sent to the real API server: refused with the field named, or reconciled
without crashing or wedging the operator.

Specs are generated from the CRD's own schema (crds/maptask.yaml) by hypothesis-jsonschema,
so they are valid for the API server's structural checks but arbitrary in every value the
schema allows. Each accepted one must get a status from the operator, the operator must not
restart, and a plain task created afterwards must still run to the end.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chaoskit import NAMESPACE, get_task, report
from faults import running_operator, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis_jsonschema import from_schema
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

CRD = Path(__file__).resolve().parents[2] / "crds" / "maptask.yaml"
GENERATED = 24


def spec_schema() -> dict[str, Any]:
    """The CRD's spec schema as plain JSON Schema (the x-kubernetes-* keys dropped)."""
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def plain(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: plain(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
            if out.get("type") == "object" and "additionalProperties" not in out:
                # Unknown fields are pruned by the API server: generating them tests nothing.
                out["additionalProperties"] = False
            out.pop("format", None)
            out.pop("default", None)
            return out
        if isinstance(node, list):
            return [plain(v) for v in node]
        return node

    return dict(plain(schema))


def harmless(spec: dict[str, Any]) -> dict[str, Any]:
    """Bound what an accepted spec can cost: few indices, a command that exits at once, a
    deadline. Everything else stays as generated."""
    spec = copy.deepcopy(spec)
    if "count" in spec:
        spec["count"] = min(spec["count"], 3)
    if "items" in spec:
        spec["items"] = spec["items"][:3]
        spec.pop("count", None)
    spec.setdefault("count", 2) if "items" not in spec else None
    spec["parallelism"] = min(spec.get("parallelism", 3), 3)
    spec["activeDeadlineSeconds"] = 60
    spec["ttlSecondsAfterFinished"] = 5
    template = spec.setdefault("template", {})
    template["command"] = ["true"]
    # Half the specs keep a generated image (or none: refused by a CEL rule, which is tested
    # too); the others get one, so that enough of them are accepted and reconciled.
    if len(json.dumps(spec)) % 2:
        template.setdefault("image", "busybox")
        spec["mode"] = "Container"
        if spec.get("maxFailedIndexes", 0) > spec.get("count", len(spec.get("items", []))):
            spec.pop("maxFailedIndexes")
    template.pop("args", None)
    return spec


def maptask(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": name},
        "spec": spec,
    }


def create(custom: client.CustomObjectsApi, body: dict[str, Any], strict: bool = False) -> None:
    custom.create_namespaced_custom_object(
        "kubemap.io",
        "v1alpha1",
        NAMESPACE,
        "maptasks",
        body,
        field_validation="Strict" if strict else None,
    )


@pytest.fixture
def created(custom: client.CustomObjectsApi) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        try:
            custom.delete_namespaced_custom_object(
                "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise


def reconciled(custom: client.CustomObjectsApi, name: str) -> bool:
    try:
        return bool((get_task(custom, name).get("status") or {}).get("phase"))
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise


def operator_identity(core: client.CoreV1Api) -> tuple[str, int]:
    pod = running_operator(core)
    assert pod is not None
    return pod.metadata.name, pod.status.container_statuses[0].restart_count


def test_generated_specs_are_refused_or_reconciled(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    created: list[str],
) -> None:
    before = operator_identity(core)
    outcomes = {"accepted": 0, "refused": 0}
    refusals: list[str] = []

    @settings(
        max_examples=GENERATED,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(from_schema(spec_schema()))
    def one(spec: dict[str, Any]) -> None:
        name = unique("gen")
        try:
            create(custom, maptask(name, harmless(spec)))
        except ApiException as exc:
            assert exc.status in (400, 422), (exc.status, exc.body)
            message = json.loads(exc.body).get("message", "")
            if exc.status == 422:  # a value the schema allows but a rule refuses: named
                assert "spec" in message, message
            outcomes["refused"] += 1
            refusals.append(message[:160])
            return
        created.append(name)
        outcomes["accepted"] += 1

    one()
    # Every accepted task gets a status from the operator (or is already gone: finished and
    # deleted by its ttlSecondsAfterFinished, which only the operator does).
    for name in created:
        wait_until(f"the operator gives {name} a phase", lambda n=name: reconciled(custom, n), 90)
    assert operator_identity(core) == before, "the operator restarted on a generated spec"
    canary = unique("canary")
    create(
        custom,
        maptask(canary, {"count": 2, "template": {"image": "busybox", "command": ["true"]}}),
    )
    created.append(canary)
    wait_until(
        "a plain task still succeeds after the generated ones",
        lambda: (get_task(custom, canary).get("status") or {}).get("phase") == "Succeeded",
        120,
    )
    report(
        f"{GENERATED} generated specs: {outcomes['accepted']} accepted and reconciled, "
        f"{outcomes['refused']} refused naming the field; operator never restarted"
    )


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("negative count", {"count": -1}, "spec.count"),
    ("count as text", {"count": "ten"}, "spec.count"),
    ("zero parallelism", {"count": 1, "parallelism": 0}, "spec.parallelism"),
    ("unknown mode", {"count": 1, "mode": "Lambda"}, "spec.mode"),
    ("success ratio above 1", {"count": 1, "minSuccessRatio": 1.5}, "spec.minSuccessRatio"),
    ("too many inline items", {"items": ["x"] * 1001}, "spec.items"),
    ("inline item too long", {"items": ["x" * 4097]}, "spec.items[0]"),
    ("neither count nor items", {"parallelism": 2}, "spec.count"),
    ("store without url", {"count": 1, "store": {"region": "eu"}}, "spec.store.url"),
    ("empty store url", {"count": 1, "store": {"url": ""}}, "spec.store.url"),
    ("bad pull policy", {"count": 1, "template": {"imagePullPolicy": "Sometimes"}}, "spec.template.imagePullPolicy"),
    ("retries above 100", {"count": 1, "backoffLimitPerIndex": 101}, "spec.backoffLimitPerIndex"),
    ("items per pod 0", {"count": 1, "itemsPerPod": 0}, "spec.itemsPerPod"),
    ("deadline 0", {"count": 1, "activeDeadlineSeconds": 0}, "spec.activeDeadlineSeconds"),
    ("label value too long", {"count": 1, "template": {"labels": {"a": "v" * 64}}}, "spec.template.labels.a"),
    ("command not a list", {"count": 1, "template": {"command": "echo hi"}}, "spec.template.command"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "spec", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_is_refused_naming_the_field(
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    created: list[str],
    what: str,
    spec: dict[str, Any],
    field: str,
) -> None:
    name = unique("bad")
    body = maptask(name, {"template": {"image": "busybox"}, **spec})
    with pytest.raises(ApiException) as info:
        create(custom, body)
        created.append(name)
    assert info.value.status == 422, info.value.body
    message = json.loads(info.value.body)["message"]
    assert field in message, f"{what}: {message}"


def test_misspelt_field_is_refused_under_strict_validation(
    custom: client.CustomObjectsApi, unique: Callable[[str], str], created: list[str]
) -> None:
    """`kubectl apply` validates strictly by default: a typo is named, not dropped."""
    name = unique("typo")
    body = maptask(name, {"count": 1, "paralelism": 3, "template": {"image": "busybox"}})
    with pytest.raises(ApiException) as info:
        create(custom, body, strict=True)
        created.append(name)
    assert 'unknown field "spec.paralelism"' in json.loads(info.value.body)["message"]


def test_oversized_inline_items_are_refused(
    custom: client.CustomObjectsApi, unique: Callable[[str], str], created: list[str]
) -> None:
    """1000 items of 4 KiB: within the schema, but past what one object may weigh in etcd."""
    name = unique("huge")
    body = maptask(name, {"items": ["y" * 4096] * 1000, "template": {"image": "busybox"}})
    started = time.monotonic()
    with pytest.raises(ApiException) as info:
        create(custom, body)
        created.append(name)
    message = (info.value.body or str(info.value))[:300]
    assert info.value.status in (413, 422), (info.value.status, message)
    report(
        f"4 MiB of inline items refused ({info.value.status}) in "
        f"{time.monotonic() - started:.1f}s: {message}"
    )
