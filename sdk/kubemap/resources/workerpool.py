"""The WorkerPool custom resource: a set of warm worker pods that MapTasks lease work to.

Like models.py these models are the source of truth: crds/workerpool.yaml is generated from
them (`kubemap crd --pool`), and a test fails when the two drift. The names below are part of
the contract between the SDK, the operator, the pool workers and the chart.
"""

from __future__ import annotations

import sys
from typing import Any, Final

from pydantic import ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kubemap.resources.maptask import DNS_LABEL, _Wire
from kubemap.resources.requirements import check_packages

POOL_KIND: Final = "WorkerPool"
POOL_PLURAL: Final = "workerpools"
POOL_SINGULAR: Final = "workerpool"
POOL_SHORT_NAME: Final = "wp"
LABEL_POOL: Final = "kubemap.io/pool"  # on every worker pod of a pool
# The MapTask annotation naming the Python (major.minor) that pickled its function: a worker
# of another minor version never leases it (pickles are not portable across minors).
ANNOTATION_PYTHON: Final = "kubemap.io/python"
# Environment of a pool worker pod.
ENV_DISPATCHER: Final = "KUBEMAP_DISPATCHER_URL"
ENV_POOL: Final = "KUBEMAP_POOL"  # <namespace>/<name>
ENV_POOL_TOKEN: Final = "KUBEMAP_POOL_TOKEN"  # from the pool's Secret, never in the spec
TOKEN_KEY: Final = "token"  # key of the token in the pool's Secret
POOL_WORKER_COMMAND: Final = ("python", "-m", "kubemap.runtime.poolworker")


def python_minor() -> str:
    """'3.11': the Python of this process, the unit that decides whether a pickle loads."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def pool_resource_name(pool: str) -> str:
    """Name of the Deployment and Secret the operator makes for a pool."""
    return f"kubemap-pool-{pool}"[:63].rstrip("-.")


class WorkerPoolSpec(_Wire):
    """Warm workers: how many, which image, what they may use."""

    replicas: int = Field(default=2, ge=0, le=1000, description="Workers while there is work.")
    min_replicas: int = Field(
        default=0, ge=0, le=1000, description="Workers kept after idleTTLSeconds without work."
    )
    max_replicas: int = Field(
        default=100, ge=1, le=1000, description="Upper bound for replicas (kubemap pool scale)."
    )
    idle_ttl_seconds: int = Field(
        default=300,
        ge=0,
        le=7 * 24 * 3600,
        description="Scale to minReplicas after this long without work; 0 = never.",
    )
    image: str | None = Field(default=None, max_length=512)
    image_pull_policy: str | None = Field(default=None, pattern="^(Always|IfNotPresent|Never)$")
    resources: dict[str, Any] | None = None
    env: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = Field(default=None, max_length=64)
    service_account_name: str | None = Field(default=None, max_length=253)
    packages: list[str] | None = Field(
        default=None,
        max_length=64,
        description="pip requirements every worker installs once (PIP_INDEX_URL etc. from env).",
    )
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL,
        description="Kueue LocalQueue (same namespace) that admits the workers: the Deployment "
        "carries the label kueue.x-k8s.io/queue-name, each worker is admitted on its own and "
        "the ones beyond the quota wait, gated (status.waiting). Needs Kueue on the cluster.",
    )

    @model_validator(mode="after")
    def _check(self) -> WorkerPoolSpec:
        if self.packages:
            check_packages(self.packages, where="spec.packages")
        if self.min_replicas > self.replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) is above replicas ({self.replicas}): lower it"
            )
        if self.replicas > self.max_replicas:
            raise ValueError(
                f"replicas ({self.replicas}) is above maxReplicas ({self.max_replicas})"
            )
        return self


class WorkerPoolStatus(_Wire):
    """What the operator sees of the pool; written only when a number changes."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    replicas: int = 0  # workers wanted right now (replicas, or minReplicas when idle)
    ready: int = 0
    busy: int = 0
    idle: int = 0
    tasks_served: int = 0
    python_version: str | None = None  # major.minor the workers run
    idle_since: str | None = None  # RFC 3339; unset while a task is running
    # With spec.queueName: workers Kueue admitted (ungated) and workers waiting for quota
    # (gated); unset for a pool outside Kueue.
    admitted: int | None = None
    waiting: int | None = None
    message: str | None = None
