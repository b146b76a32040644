"""Generate the MapTask and WorkerPool CustomResourceDefinitions from the pydantic models.

`kubemap crd` and `kubemap pool crd` print them; crds/ holds their output, and tests/unit/test_crd.py fails
when the two drift. The models give the structure and bounds; this module turns pydantic's
JSON schema into a Kubernetes structural schema (inline $refs, no anyOf-null, pass-through
Kubernetes types kept as-is), adds a bound to every string, list and map (the API server
needs bounded sizes to accept CEL rules), and adds the CEL rules the schema cannot say.
"""

from __future__ import annotations

from typing import Any

import yaml

from kubemap import contract
from kubemap.resources.maptask import MAX_ITEM_LENGTH, MapTaskSpec, MapTaskStatus
from kubemap.resources.workerpool import (
    POOL_KIND,
    POOL_PLURAL,
    POOL_SHORT_NAME,
    POOL_SINGULAR,
    WorkerPoolSpec,
    WorkerPoolStatus,
)

# Bounds for strings, lists and maps the models leave open, by JSON path below the spec/status.
DEFAULT_MAX_LENGTH = 1024
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_PROPERTIES = 64
BOUNDS: dict[str, dict[str, Any]] = {
    "spec.items[]": {"maxLength": MAX_ITEM_LENGTH},
    "spec.template.command[]": {"maxLength": 4096},
    "spec.template.args[]": {"maxLength": 4096},
    "spec.template.labels": {"maxProperties": 32},
    "spec.template.labels{}": {"maxLength": 63},
    "spec.template.annotations": {"maxProperties": 32},
    "spec.template.annotations{}": {"maxLength": 4096},
    "spec.template.nodeSelector{}": {"maxLength": 63},
    "status.succeededIndexes": {"maxLength": 40000},
    "status.failedIndexes": {"maxLength": 20000},
    "status.message": {"maxLength": 1024},
    "status.conditions": {"maxItems": 8},
    "status.conditions[].type": {"maxLength": 64},
    "status.conditions[].reason": {"maxLength": 128},
    "status.conditions[].message": {"maxLength": 1024},
    "status.conditions[].lastTransitionTime": {"maxLength": 64},
    "status.startTime": {"maxLength": 64},
    "status.completionTime": {"maxLength": 64},
}

DOCS: dict[str, str] = {
    "spec": "What to run over which indices, how many pods at once, and how failures are handled.",
    "spec.mode": "Function: the kubemap image runs `python -m kubemap.worker` on the task's store "
    "prefix (what the SDK creates). Container: your image and command, once per index or chunk.",
    "spec.itemsPerPod": "Indices per pod: each pod runs the slice [KUBEMAP_INDEX, KUBEMAP_INDEX+KUBEMAP_COUNT).",
    "spec.parallelism": "Most pods running at once (pending or running); may be changed while the task runs.",
    "spec.backoffLimitPerIndex": "Retries of each index after its code failed (exit code other than 0, 4 "
    "and 5). Retries wait 10 s, 20 s, 40 s ... up to 6 min. Infrastructure failures (exit code 4, pod "
    "evicted or deleted from outside, node lost) are retried without spending these.",
    "spec.maxFailedIndexes": "Fail the whole task once more than this many indices failed for good.",
    "spec.minSuccessRatio": "Fraction of indices that must succeed; the task fails as soon as that is out of reach.",
    "spec.activeDeadlineSeconds": "Fail the task (and stop its pods) after it ran this long.",
    "spec.ttlSecondsAfterFinished": "Delete the MapTask (and its pods) this long after it finished.",
    "spec.suspend": "Set to true to cancel: running pods are deleted and the task ends as Cancelled.",
    "spec.store": "Where the task's data lives (function mode: required, the SDK sets it).",
    "spec.files": "Container mode over files: every object below input matching glob is an item. "
    "Each pod finds its file at $KUBEMAP_INPUT_PATH (downloaded by an init container using the "
    "kubemap image) and whatever it writes under $KUBEMAP_OUTPUT_DIR is uploaded, once, to "
    "<output>/<the file's key below input>/. The listing is paged and kept in spec.store, never "
    "in this object; status.listed and status.skipped count the files.",
    "status.listed": "spec.files: how many objects matched input and glob.",
    "status.skipped": "spec.files with skipExisting: matched files already processed, not run.",
    "spec.template": "The worker pod: image, command, args, env, resources and scheduling.",
    "spec.template.image": "Image of the worker container; function mode defaults to the kubemap image.",
    "spec.template.command": "Container entrypoint; function mode defaults to `python -m kubemap.worker`.",
    "spec.template.env": "Extra environment variables (Kubernetes EnvVar objects).",
    "spec.template.resources": "Container resources (Kubernetes ResourceRequirements).",
    "spec.template.tolerations": "Pod tolerations (Kubernetes Toleration objects).",
    "status": "Progress, bounded in size however many items: index sets are compressed ranges.",
    "status.phase": "Pending, Running, Succeeded, Failed or Cancelled.",
    "status.total": "Number of indices of the task.",
    "status.succeeded": "Indices that succeeded.",
    "status.failed": "Indices that failed for good (after their retries).",
    "status.active": "Pods pending or running.",
    "status.succeededIndexes": "Succeeded indices as compressed ranges, e.g. '0-3,7'. Kept to at most "
    "2000 ranges: while more would be needed, a finished pod stays as the record of its success until "
    "its neighbours finish and the ranges merge.",
    "status.failedIndexes": "Indices that failed for good, as compressed ranges. Kept to at most 1000 "
    "ranges: a task whose tolerated failures scatter over more ranges fails with reason "
    "TooManyFailedRanges (function mode keeps every failure record in the task's store).",
    "status.observedGeneration": "The spec generation this status reflects.",
}


class _Converter:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs

    def convert(self, node: dict[str, Any], path: str) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            target = self.defs[node.pop("$ref").rsplit("/", 1)[-1]]
            node = {**target, **node}
        if "anyOf" in node:
            choices = [c for c in node.pop("anyOf") if c.get("type") != "null"]
            if len(choices) == 1:
                node = {**self.convert(choices[0], path), **node}
            if node.get("default", 0) is None:
                node.pop("default")
        out: dict[str, Any] = {}
        if path in DOCS:
            out["description"] = DOCS[path]
        elif node.get("description"):
            out["description"] = " ".join(str(node["description"]).split())
        kind = node.get("type")
        if kind == "object":
            out["type"] = "object"
            props = node.get("properties")
            extra = node.get("additionalProperties")
            if props:
                out["properties"] = {k: self.convert(v, f"{path}.{k}") for k, v in props.items()}
                if node.get("required"):
                    out["required"] = list(node["required"])
            elif isinstance(extra, dict) and extra:
                out["additionalProperties"] = self.convert(extra, path + "{}")
                out["maxProperties"] = DEFAULT_MAX_PROPERTIES
            else:  # dict[str, Any]: a Kubernetes type passed through as-is
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif kind == "array":
            out["type"] = "array"
            out["items"] = self.convert(node.get("items", {}), path + "[]")
            out["maxItems"] = node.get("maxItems", DEFAULT_MAX_ITEMS)
        elif kind == "string":
            out["type"] = "string"
            out["maxLength"] = node.get("maxLength", DEFAULT_MAX_LENGTH)
            for key in ("minLength", "pattern", "enum"):
                if key in node:
                    out[key] = node[key]
        elif kind in ("integer", "number", "boolean"):
            out["type"] = kind
            for key in ("minimum", "maximum"):
                if key in node:
                    out[key] = node[key]
            if kind == "integer":
                out["format"] = "int64"
        if "default" in node and kind in ("integer", "number", "boolean", "string"):
            out["default"] = node["default"]
        out.update(BOUNDS.get(path, {}))
        return out


def _schema(model: type[MapTaskSpec] | type[MapTaskStatus], path: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _Converter(raw.get("$defs", {})).convert(raw, path)


def _rule(rule: str, message: str, **extra: str) -> dict[str, str]:
    return {"rule": rule, "message": message, **extra}


IMMUTABLE = ("mode", "count", "items", "itemsPerPod", "store", "template", "pool", "files")

SPEC_RULES = [
    _rule(
        "has(self.count) || has(self.items) || has(self.files)",
        "give spec.count (number of indices), spec.items (an inline list) or spec.files",
    ),
    _rule(
        "!has(self.files) || (!has(self.count) && !has(self.items))",
        "spec.files makes one item per matching file: remove spec.count and spec.items",
    ),
    _rule(
        "!has(self.files) || self.mode == 'Container'",
        "spec.files is for Container mode: your image runs once per file",
    ),
    _rule(
        "!has(self.files) || !has(self.itemsPerPod) || self.itemsPerPod == 1",
        "spec.files runs one file per pod: remove spec.itemsPerPod",
    ),
    _rule(
        "!has(self.items) || !has(self.count) || self.count == size(self.items)",
        "spec.count differs from the number of spec.items: give only one of them",
    ),
    _rule(
        "self.mode != 'Function' || !has(self.items)",
        "spec.items is for Container mode; Function mode reads its inputs from spec.store",
    ),
    _rule(
        "self.mode != 'Function' || has(self.store)",
        "Function mode needs spec.store.url, where the SDK uploaded fn.pkl and the inputs",
    ),
    _rule(
        "self.mode != 'Container' || (has(self.template) && has(self.template.image))",
        "Container mode needs spec.template.image",
    ),
    _rule(
        "!has(self.maxFailedIndexes) || !has(self.count) || self.maxFailedIndexes <= self.count",
        "spec.maxFailedIndexes cannot exceed spec.count",
    ),
    *[
        _rule(
            f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})",
            f"spec.{f} cannot change after creation: create a new MapTask instead",
        )
        for f in IMMUTABLE
    ],
]


Column = tuple[str, str, str] | tuple[str, str, str, int]  # name, type, jsonPath[, priority]


def build_crd() -> dict[str, Any]:
    spec = _schema(MapTaskSpec, "spec")
    spec["x-kubernetes-validations"] = SPEC_RULES
    status = _schema(MapTaskStatus, "status")
    status["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    status["properties"]["conditions"]["items"]["required"] = ["type", "status"]
    root = {
        "type": "object",
        "description": "A function or container mapped over a list of indices, one pod per index or chunk.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 63}},
            },
            "spec": spec,
            "status": status,
        },
    }
    columns: list[Column] = [
        ("Phase", "string", ".status.phase"),
        ("Succeeded", "integer", ".status.succeeded"),
        ("Total", "integer", ".status.total"),
        ("Failed", "integer", ".status.failed"),
        ("Active", "integer", ".status.active"),
        ("Not-Run", "integer", ".status.notRun"),
        ("Reason", "string", ".status.conditions[-1:].reason", 1),
        ("Items/s", "number", ".status.timing.itemsPerSecond", 1),
        ("P95", "number", ".status.timing.p95Seconds", 1),
        ("Slowest", "string", ".status.timing.slowestWorker", 1),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]
    return crd_document(
        kind=contract.KIND,
        plural=contract.PLURAL,
        singular=contract.SINGULAR,
        short_name=contract.SHORT_NAME,
        columns=columns,
        root=root,
    )


def crd_document(
    *, kind: str, plural: str, singular: str, short_name: str, columns: list[Column], root: Any
) -> dict[str, Any]:
    """A namespaced kubemap.io CRD of one served version with a status subresource (MapTask
    and WorkerPool are built the same way)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{contract.GROUP}"},
        "spec": {
            "group": contract.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": singular,
                "shortNames": [short_name],
                "categories": ["all", "kubemap"],
            },
            "versions": [
                {
                    "name": contract.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": c[0], "type": c[1], "jsonPath": c[2]}
                        | ({"priority": c[3]} if len(c) > 3 else {})
                        for c in columns
                    ],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


# The first line of crds/*.yaml names the module the models lived in when the CRDs were first
# published; it stays word for word so that the CRDs users apply stay the same, byte for byte.
HEADER = "# Generated by `kubemap crd` from sdk/kubemap/models.py; do not edit by hand.\n"


def render_crd() -> str:
    return HEADER + str(yaml.safe_dump(build_crd(), sort_keys=False, width=100))


# The WorkerPool CRD, made the same way (`kubemap pool crd` prints it).
POOL_DOCS = {
    "spec": "Warm workers that MapTasks with spec.pool lease chunks of work to.",
    "spec.env": "Extra environment variables of the workers (Kubernetes EnvVar objects).",
    "spec.resources": "Worker container resources (Kubernetes ResourceRequirements).",
    "spec.tolerations": "Worker pod tolerations (Kubernetes Toleration objects).",
    "status": "Workers ready, busy and idle; written only when a number changes.",
    "status.idleSince": "When the pool last ran out of work; unset while a task runs.",
    "status.admitted": "With spec.queueName: workers Kueue admitted (running or starting).",
    "status.waiting": "With spec.queueName: workers waiting, gated, for quota in the queue.",
}


def _pool_schema(model: type[WorkerPoolSpec] | type[WorkerPoolStatus], path: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    converter = _Converter(raw.get("$defs", {}))
    out = converter.convert(raw, path)
    for key, text in POOL_DOCS.items():
        head, _, field = key.partition(".")
        if head == path and field and field in out.get("properties", {}):
            out["properties"][field]["description"] = text
        elif key == path:
            out["description"] = text
    return out


def build_pool_crd() -> dict[str, Any]:
    spec = _pool_schema(WorkerPoolSpec, "spec")
    spec["x-kubernetes-validations"] = [
        {
            "rule": "!has(self.minReplicas) || !has(self.replicas) || self.minReplicas <= self.replicas",
            "message": "spec.minReplicas cannot be above spec.replicas",
        },
        {
            "rule": "!has(self.maxReplicas) || !has(self.replicas) || self.replicas <= self.maxReplicas",
            "message": "spec.replicas cannot be above spec.maxReplicas",
        },
    ]
    root = {
        "type": "object",
        "description": "A set of warm kubemap workers, reused by every MapTask that names it in spec.pool.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 40}},
            },
            "spec": spec,
            "status": _pool_schema(WorkerPoolStatus, "status"),
        },
    }
    columns: list[Column] = [
        ("Replicas", "integer", ".status.replicas"),
        ("Ready", "integer", ".status.ready"),
        ("Busy", "integer", ".status.busy"),
        ("Idle", "integer", ".status.idle"),
        ("Admitted", "integer", ".status.admitted"),
        ("Waiting", "integer", ".status.waiting"),
        ("Tasks", "integer", ".status.tasksServed"),
        ("Python", "string", ".status.pythonVersion"),
        ("Idle-Since", "date", ".status.idleSince"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]
    return crd_document(
        kind=POOL_KIND,
        plural=POOL_PLURAL,
        singular=POOL_SINGULAR,
        short_name=POOL_SHORT_NAME,
        columns=columns,
        root=root,
    )


POOL_HEADER = (
    "# Generated by `kubemap pool crd` from sdk/kubemap/poolmodels.py; do not edit by hand.\n"
)


def render_pool_crd() -> str:
    return POOL_HEADER + str(yaml.safe_dump(build_pool_crd(), sort_keys=False, width=100))
