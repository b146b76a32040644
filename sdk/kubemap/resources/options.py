"""The options of kubemap.map / submit / imap, the Executor, joblib and `kubemap run`:
RunOptions, and validate_options, the one place each call's keyword options are checked.

Pure logic, no I/O: a bad option becomes a ConfigError that names the option, the value
given and what is allowed, instead of pydantic's generic report.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kubemap.contract import MAX_TASK_NAME
from kubemap.core.parallelism import MAX_PARALLELISM
from kubemap.errors import ConfigError
from kubemap.resources.maptask import Speculation
from kubemap.resources.requirements import check_task_packages


class RunOptions(BaseModel):
    """Options of kubemap.map / kubemap.submit; keyword-only in the API, validated here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: the backend's default (kubemap.core.parallelism.default_parallelism)
    parallelism: int | None = Field(default=None, ge=1, le=MAX_PARALLELISM)
    items_per_pod: int | None = Field(default=None, ge=1, le=100_000)
    retries: int = Field(default=0, ge=0, le=100)
    min_success_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    timeout: float | None = Field(default=None, gt=0)
    backend: Literal["local", "kubernetes"] = "local"
    store: str | None = None
    name: str | None = Field(
        default=None, max_length=MAX_TASK_NAME, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    # per-item cache (kubemap.api.cache): reuse results keyed by function identity and item
    cache: bool = False
    cache_version: str | None = Field(default=None, max_length=128)
    # Kubernetes backend only
    image: str | None = None
    namespace: str | None = None
    resources: dict[str, Any] | None = None
    env: dict[str, str] | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = Field(default=None, max_length=64)
    service_account: str | None = None
    # The S3 endpoint as the pods reach it, when it is not the operator's default (a MinIO
    # the SDK reaches through a port-forward, a node network of its own).
    store_endpoint: str | None = Field(default=None, max_length=1024, pattern=r"^https?://")
    pool: str | None = Field(
        default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    packages: list[str] | None = Field(default=None, max_length=64)  # pool tasks only
    # Kueue: the LocalQueue that admits the task's pods (spec.queueName), and their
    # PriorityClass (spec.template.priorityClassName: higher preempts lower under Kueue).
    queue: str | None = Field(
        default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    priority: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )

    # Backup copies of straggling slices on the cluster (pool and pods): True (the default),
    # False (off: no item runs twice, e.g. for a function with side effects), or a
    # Speculation with its own factor, min_seconds and budget. Local runs have no stragglers
    # to speak of and ignore it.
    speculation: bool | Speculation = True

    @model_validator(mode="after")
    def _check_packages(self) -> RunOptions:
        if self.backend == "local":
            _refuse_cluster_options(self)
        if self.packages:
            check_task_packages(self.packages, self.pool if self.backend == "kubernetes" else None)
        if self.queue and self.pool:
            raise ValueError(
                f"queue={self.queue!r} with pool={self.pool!r}: a pool task runs on the pool's "
                "workers, which the WorkerPool's own queueName admits; drop queue="
            )
        return self


# Options only a cluster run honours. The local backend would ignore them, and a user who
# forgot backend= would believe their pool, image or namespace ran the work: refused here,
# the one place every surface's options pass (map, submit, imap, Executor, joblib, CLI).
KUBERNETES_ONLY = (
    "pool",
    "image",
    "namespace",
    "resources",
    "env",
    "node_selector",
    "tolerations",
    "service_account",
    "store_endpoint",
    "queue",
    "priority",
)


def _refuse_cluster_options(options: RunOptions) -> None:
    given = [
        f"{k}={getattr(options, k)!r}" for k in KUBERNETES_ONLY if getattr(options, k) is not None
    ]
    if given:
        raise ValueError(
            f"{', '.join(given)}: Kubernetes options, and this run is local (backend='local', "
            'the default): pass backend="kubernetes" to run on the cluster, or leave '
            + ("it" if len(given) == 1 else "them")
            + " out to run here"
        )


def validate_options(options: dict[str, Any]) -> RunOptions:
    """RunOptions from keyword options; ConfigError naming the option when one is wrong."""
    known = set(RunOptions.model_fields)
    unknown = [key for key in options if key not in known]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown option {key!r}: {hint}options are {', '.join(sorted(known))}")
    try:
        return RunOptions(**options)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, options)) from None


def _describe(exc: ValidationError, options: dict[str, Any]) -> str:
    lines = []
    for error in exc.errors():
        if not error["loc"] and error["type"] == "value_error":
            # a rule across options (RunOptions' model validator): its message says it all
            lines.append(str((error.get("ctx") or {}).get("error", error["msg"])))
            continue
        field = str(error["loc"][0]) if error["loc"] else "options"
        given = options.get(field, "<missing>")
        lines.append(f"invalid option {field}={given!r}: {_allowed(field, error)}")
    return "; ".join(lines)


def _allowed(field: str, error: Any) -> str:
    ctx = error.get("ctx") or {}
    if error["type"] == "literal_error":
        return f"use one of {ctx.get('expected', '')}"
    if field == "name":
        return (
            f"a task name is at most {MAX_TASK_NAME} characters of lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (DNS-1123)"
        )
    bounds = RunOptions.model_fields[field].metadata if field in RunOptions.model_fields else []
    limits = []
    for bound in bounds:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(bound, attr, None)
            if value is not None:
                limits.append(f"{word} {value}")
    message = str(error["msg"])
    return message + (f" (allowed: {' and '.join(limits)})" if limits else "")
