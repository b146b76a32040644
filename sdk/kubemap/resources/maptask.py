"""The MapTask resource: its spec and status as pydantic v2 models.

These models are the single source of truth: crds/maptask.yaml is generated from them
(`kubemap crd`), and a test fails when the two drift. Field names are snake_case in Python
and camelCase on the wire, as Kubernetes users expect.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kubemap.core.parallelism import DEFAULT_PARALLELISM, MAX_PARALLELISM
from kubemap.core.speculation import (
    DEFAULT_BUDGET,
    DEFAULT_FACTOR,
    DEFAULT_MIN_SECONDS,
    SpeculationRule,
)
from kubemap.core.status import Phase
from kubemap.resources.requirements import check_task_packages

MAX_INLINE_ITEMS = 1000
MAX_ITEM_LENGTH = 4096
MAX_COUNT = 100_000_000
# The chart's values.schema.json (s3.defaultStore) holds the same rule; a test compares them.
STORE_URL_PATTERN = r"^(s3|file)://.+$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def to_wire(self) -> dict[str, Any]:
        """This object as the Kubernetes API takes it: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Mode(enum.StrEnum):
    FUNCTION = "Function"  # the kubemap image runs `python -m kubemap.worker`
    CONTAINER = "Container"  # any image; index and item in the environment


class StoreRef(_Wire):
    """Where the task's data lives. Credentials come from a Secret, never from the spec."""

    # The operator's pods reach S3 (s3://) or a directory they mount (file://): a plain path
    # or another scheme (gs://) would fail in every pod, so the API server refuses it.
    url: str = Field(
        description="Store prefix, s3://bucket/prefix or file:///dir; the task's files go under <url>/<task name>/.",
        min_length=1,
        max_length=1024,
        pattern=STORE_URL_PATTERN,
    )
    endpoint: str | None = Field(
        default=None,
        max_length=1024,
        description="S3 endpoint URL (AWS_ENDPOINT_URL_S3) for S3-compatible servers.",
    )
    region: str | None = Field(default=None, max_length=64)
    secret_name: str | None = Field(
        default=None,
        max_length=253,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY keys, read by worker pods.",
    )


class FilesSpec(_Wire):
    """Container mode over files: one item per object matching input + glob; each pod gets its
    file at $KUBEMAP_INPUT_PATH and its $KUBEMAP_OUTPUT_DIR is uploaded to output/<name>/."""

    input: str = Field(
        description="Prefix URL of the input files, s3://bucket/prefix/ (or file:///dir/).",
        min_length=1,
        max_length=1024,
        pattern=STORE_URL_PATTERN,
    )
    glob: str = Field(
        default="**",
        min_length=1,
        max_length=1024,
        description="Which keys below input are items: `*` and `?` within a path segment, "
        "`**` across segments, `[abc]` a class; default every object.",
    )
    output: str = Field(
        description="Prefix URL the outputs go to: what a pod writes under $KUBEMAP_OUTPUT_DIR "
        "lands at <output>/<the file's name below input>/..., each object written once.",
        min_length=1,
        max_length=1024,
        pattern=STORE_URL_PATTERN,
    )
    skip_existing: bool = Field(
        default=False,
        description="Skip files this program already processed (a cache in the store keyed by "
        "image, command, args, env, input, glob, output and version, and each file's size and "
        "ETag): adding 10 files to 1,000 runs 10.",
    )
    version: str | None = Field(
        default=None,
        max_length=128,
        description="Bump to reprocess every file with skipExisting (part of the cache key).",
    )


class PodTemplate(_Wire):
    """The parts of a pod a MapTask lets users set. Kubernetes types are passed through."""

    image: str | None = Field(default=None, max_length=512)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: list[str] | None = Field(default=None, max_length=64)
    args: list[str] | None = Field(default=None, max_length=256)
    env: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    resources: dict[str, Any] | None = None
    node_selector: dict[str, str] | None = None
    service_account_name: str | None = Field(default=None, max_length=253)
    tolerations: list[dict[str, Any]] | None = Field(default=None, max_length=64)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="PriorityClass of the worker pods: their scheduling priority, and under Kueue "
        "the workload priority that decides which pods are preempted for which.",
    )


class Speculation(_Wire):
    """Backup copies of straggling slices (on by default): a slice that runs `factor` times
    longer than the task's measured time for its items, once no slice waits, gets a second
    copy; the first to finish commits. A function's side effects may happen twice for the
    items of a copied slice: `enabled: false` (SDK: speculation=False) turns it off.

    Args:
        enabled: Whether backups are made at all.
        factor: A slice is a straggler after this many times its expected time.
        min_seconds: Never copy a slice that has run less than this.
        budget: Backups cover at most this share of the task's items.
    """

    enabled: bool = True
    factor: float = Field(
        default=DEFAULT_FACTOR,
        ge=1.0,
        le=100.0,
        description="A slice is a straggler after this many times its expected time.",
    )
    min_seconds: float = Field(
        default=DEFAULT_MIN_SECONDS,
        ge=0.0,
        le=86400.0,
        description="Never copy a slice that has run less than this (noise in short slices).",
    )
    budget: float = Field(
        default=DEFAULT_BUDGET,
        ge=0.0,
        le=1.0,
        description="Backup copies cover at most this share of the task's items.",
    )

    def rule(self) -> SpeculationRule:
        """The core's rule (kubemap.core.speculation) of these settings."""
        return SpeculationRule(self.enabled, self.factor, self.min_seconds, self.budget)


class MapTaskSpec(_Wire):
    """What to run, how many, and how failures are handled."""

    mode: Mode = Mode.CONTAINER
    count: int | None = Field(
        default=None, ge=0, le=MAX_COUNT, description="Number of indices (or give items)."
    )
    items: list[str] | None = Field(
        default=None,
        max_length=MAX_INLINE_ITEMS,
        description="Container mode: inline items; pod i gets items[i] as KUBEMAP_ITEM.",
    )
    items_per_pod: int = Field(default=1, ge=1, le=100_000)
    parallelism: int = Field(default=DEFAULT_PARALLELISM, ge=1, le=MAX_PARALLELISM)
    backoff_limit_per_index: int = Field(default=0, ge=0, le=100)
    max_failed_indexes: int | None = Field(default=None, ge=0)
    min_success_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    suspend: bool = False
    store: StoreRef | None = None
    template: PodTemplate = Field(default_factory=PodTemplate)
    pool: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Run on the warm workers of this WorkerPool (same namespace) instead of pods.",
    )
    packages: list[str] | None = Field(
        default=None,
        max_length=64,
        description="Pool tasks: pip requirements the workers install (once each) for this task.",
    )
    files: FilesSpec | None = None
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL,
        description="Kueue LocalQueue (same namespace) that admits the worker pods: each pod "
        "carries the label kueue.x-k8s.io/queue-name and waits, gated, until the queue's quota "
        "has room. Unset: the chart's kueue.defaultQueue, else Kueue's own default (a LocalQueue "
        "named default in the namespace). parallelism stays the upper bound.",
    )
    speculation: Speculation | None = Field(
        default=None,
        description="Backup copies of straggling slices; unset: on, with the defaults.",
    )

    @model_validator(mode="after")
    def _check_shape(self) -> MapTaskSpec:
        if self.queue_name is not None and self.pool is not None:
            raise ValueError(
                "queueName is for tasks that run pods; a pool's workers are admitted by the "
                "WorkerPool's own spec.queueName"
            )
        if self.files is not None:
            _check_files(self)
            if self.pool is not None:
                raise ValueError("files runs pods of your image; pool is for function mode")
            if self.packages:
                check_task_packages(self.packages, self.pool)
            return self
        if self.items is not None:
            if self.mode is Mode.FUNCTION:
                raise ValueError(
                    "items is for container mode; function mode reads inputs from the store"
                )
            if self.count is not None and self.count != len(self.items):
                raise ValueError(
                    f"count ({self.count}) differs from len(items) ({len(self.items)}): give one of them"
                )
        elif self.count is None:
            raise ValueError("give count (number of indices) or items (inline list)")
        if self.mode is Mode.FUNCTION and self.store is None:
            raise ValueError(
                "function mode needs store.url, where the SDK uploaded fn.pkl and inputs"
            )
        if self.mode is Mode.CONTAINER and not self.template.image:
            raise ValueError("container mode needs template.image")
        if self.pool is not None and self.mode is not Mode.FUNCTION:
            raise ValueError("pool is for function mode: pool workers run the task's fn.pkl")
        if self.packages:
            check_task_packages(self.packages, self.pool)
        return self

    @property
    def total(self) -> int:
        return len(self.items) if self.items is not None else int(self.count or 0)

    @property
    def speculation_rule(self) -> SpeculationRule:
        return (self.speculation or Speculation()).rule()


def _check_files(spec: MapTaskSpec) -> None:
    """spec.files: the items come from the listing, one file per pod, your image runs it."""
    if spec.mode is not Mode.CONTAINER:
        raise ValueError("files is for Container mode: your image runs once per file")
    if spec.items is not None:
        raise ValueError(
            "give files or items, not both: with files every matching object is an item"
        )
    if spec.count is not None:
        raise ValueError("give files or count, not both: the listing of files gives the count")
    if spec.items_per_pod != 1:
        raise ValueError("files runs one file per pod: remove itemsPerPod (or set it to 1)")
    if not spec.template.image or not spec.template.command:
        raise ValueError(
            "files needs template.image and template.command: the program that reads "
            "$KUBEMAP_INPUT_PATH and writes under $KUBEMAP_OUTPUT_DIR"
        )


class Condition(_Wire):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None


class TimingSummary(_Wire):
    """Where a task's time goes, from the timing records its workers reported to the operator
    (the pods' termination lines, the pool workers' lease reports): a few numbers at any N.
    Written with the status updates the operator makes anyway, never on its own."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    items: int = Field(default=0, ge=0, description="Items the summary covers (function runs).")
    items_per_second: float | None = Field(
        default=None, description="Items run per second, first slice's start to last one's end."
    )
    p50_seconds: float | None = Field(default=None, description="Median time of one item.")
    p95_seconds: float | None = Field(default=None, description="95th percentile item time.")
    slowest_worker: str | None = Field(
        default=None, max_length=253, description="The worker (pod) with the most time per item."
    )
    slowest_worker_seconds_per_item: float | None = Field(
        default=None, description="That worker's compute time per item."
    )

    def describe(self) -> str:
        """'41.2 items/s, item p50 0.0101s p95 0.0123s, slowest worker w-3 (0.0502s/item)'."""
        parts = [f"{self.items_per_second:g} items/s" if self.items_per_second else ""]
        if self.p50_seconds is not None and self.p95_seconds is not None:
            parts.append(f"item p50 {self.p50_seconds:g}s p95 {self.p95_seconds:g}s")
        if self.slowest_worker:
            parts.append(
                f"slowest worker {self.slowest_worker} "
                f"({self.slowest_worker_seconds_per_item or 0:g}s/item)"
            )
        return ", ".join(p for p in parts if p) or f"{self.items} items timed"


class MapTaskStatus(_Wire):
    """Bounded whatever the task's size: index sets are compressed ranges ("0-3,7")."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    phase: Phase = Phase.PENDING
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    active: int = 0
    queued: int = Field(
        default=0,
        description="Pods of active that Kueue holds back (scheduling gate "
        "kueue.x-k8s.io/admission): waiting for quota in their queue, not stuck.",
    )
    not_run: int = 0  # total - succeeded - failed - active: never run (yet)
    retries: int = 0  # attempts started beyond the first of their slice
    preempted: int = Field(
        default=0,
        description="Pods started again because Kueue preempted the one before: requeued, "
        "not retried (no retry spent, not counted in retries).",
    )
    succeeded_indexes: str = ""
    failed_indexes: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None
    message: str | None = None
    # The kubemap.io/retry token last honoured, and the first attempt number of its round:
    # pods of earlier rounds (attempt below it) are no part of the rerun's plan.
    retry_token: str | None = Field(default=None, max_length=128)
    attempt_base: int = Field(default=0, ge=0)
    # Warm pools only: user failures so far of indices still to be retried, as
    # "failures:ranges;..." ("1:3-5,9;2:7"), so a restarted dispatcher grants no extra retry
    # (in pod mode the pods' annotations carry these counts).
    pool_failures: str | None = Field(default=None, max_length=16384)
    # Speculation (kubemap.core.speculation): backup copies started, backups that finished
    # first, and losing copies that finished or stopped after the race was decided.
    speculated: int = Field(default=0, ge=0, description="Backup copies of slow slices started.")
    speculation_won: int = Field(
        default=0, ge=0, description="Backup copies that finished before their original."
    )
    speculation_wasted: int = Field(
        default=0,
        ge=0,
        description="Losing copies that ran on: their work (and side effects) was repeated.",
    )
    # spec.files: how many objects matched and how many of those were skipped (already
    # processed); None until the listing pod finished. total = listed - skipped.
    listed: int | None = Field(default=None, ge=0)
    skipped: int | None = Field(default=None, ge=0)
    # Items/s, p50/p95 item time and the slowest worker, from the workers' timing records
    # (none until the first slice ends; after an operator restart, from its slices on).
    timing: TimingSummary | None = None
    pod_create_rate: float | None = Field(
        default=None,
        ge=0,
        description="Pods per second the operator creates while the API server throttles it "
        "(HTTP 429): halved by each throttle, recovering step by step; absent when not throttled.",
    )
