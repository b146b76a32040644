"""The failure policy every backend applies: one place decides how failures are classed,
how long a retry waits, how many failures a task tolerates, and when a failure is systematic.

Pure functions and frozen data only.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

from kubemap.contract import EXIT_INFRA_ERROR, EXIT_OK, EXIT_USAGE_ERROR, EXIT_USER_ERROR

# An infrastructure failure (store unreachable, node lost) is not the user's fault, so it
# does not spend the index's retries; this bound only stops an endless loop on a broken store.
INFRA_RETRY_LIMIT = 5
BACKOFF_BASE_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 360.0
# The same infrastructure cause on this many attempts, before any index succeeded, is
# systematic (bad credentials, a missing image or Secret): the task stops instead of
# spending every index's attempts on it. Scaled down for small parallelism (see below).
SYSTEMATIC_AFTER = 4


class ExitKind(enum.StrEnum):
    """What an attempt's end says about whose fault a failure was."""

    OK = "ok"
    USER = "user"  # the user's function (or container command) failed: spends a retry
    INFRA = "infra"  # the platform or the store failed: retried without spending one
    USAGE = "usage"  # the worker's environment breaks the contract: never retried


@dataclass(frozen=True)
class Cause:
    """Why an attempt failed for infrastructure, as its worker or pod reported it.

    kind: "store", "image", "secret", "oom", "unschedulable", "version", "lost", ...
    code: the precise code (S3 "InvalidAccessKeyId", "ErrImagePull", ...), if any.
    """

    kind: str
    code: str = ""
    message: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.code)

    def __str__(self) -> str:
        head = f"{self.kind} error {self.code}" if self.code else f"{self.kind} error"
        return f"{head}: {self.message}" if self.message else head


# Causes no retry can cure: the task fails at the first one, with its hint.
PERMANENT_CAUSES = frozenset(
    {
        ("store", "InvalidAccessKeyId"),
        ("store", "SignatureDoesNotMatch"),
        ("store", "NoSuchBucket"),
        ("store", "AccessDenied"),
        # The name cannot be parsed, or the node must not pull and does not have it.
        ("image", "InvalidImageName"),
        ("image", "ErrImageNeverPull"),
        ("version", ""),
        # A Secret or ConfigMap the pod needs does not exist: every pod of the task waits for
        # it (CreateContainerConfigError) until someone creates it. The message says how.
        ("secret", ""),
        # fn.pkl, an input or inputs.mac does not match the submitter's MAC (signing.py):
        # whoever changed it may change more, so no other slice of the task runs either
        ("tampered", ""),
    }
)

# Causes that take an attempt back with nothing gone wrong: a queue (Kueue) preempted the pod
# to give its quota to higher-priority work. The slice is requeued at once like a pod lost
# with its node, but spends neither a retry nor the infrastructure budget (INFRA_RETRY_LIMIT):
# a task preempted ten times is not a broken task. Not a sign of trouble either, so it raises
# no InfrastructureTrouble condition and never counts toward a systematic cause.
REQUEUE_CAUSES = frozenset({("lost", "Preempted")})


def requeued(cause: Cause | None) -> bool:
    """The attempt was taken back to be run again later (preempted), not failed."""
    return cause is not None and cause.key in REQUEUE_CAUSES


HINTS = {
    "store": "check the S3 Secret (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), the endpoint "
    "and the bucket named in spec.store",
    "image": "check the image name and tag, and that the cluster can pull it",
    "oom": "raise the memory limit (resources) or lower items_per_pod",
    "unschedulable": "check the resource requests, node selector and tolerations",
    "version": "run the SDK with the same Python minor version as the worker image",
    "tampered": "the task's files in the bucket were changed after submission: check who can "
    "write to the bucket, then submit the task again (on a warm pool this also means its key "
    "Secret was recreated after its workers started: `kubectl rollout restart deployment -l "
    "kubemap.io/pool` gives them the new key)",
}


def hint(cause: Cause) -> str:
    return HINTS.get(cause.kind, "")


@dataclass(frozen=True)
class FailureBudget:
    """How many indices may fail for good before the whole task is failed."""

    total: int
    allowed: int

    @classmethod
    def of(
        cls, total: int, *, min_success_ratio: float = 1.0, max_failed_indexes: int | None = None
    ) -> FailureBudget:
        # ratio 0.95 over 10 items needs 10 * 0.95 = 9.5 -> 10 successes: round successes up.
        needed = math.ceil(total * min_success_ratio - 1e-9)
        allowed = max(0, total - needed)
        if max_failed_indexes is not None:
            allowed = min(allowed, max_failed_indexes)
        return cls(total=total, allowed=allowed)

    def exceeded(self, failed: int) -> bool:
        return failed > self.allowed


def retry_delay(failures_so_far: int, base: float = BACKOFF_BASE_SECONDS) -> float:
    """Exponential backoff before the next attempt of an index: with the default base,
    10 s, 20 s, 40 s ... 6 min. Another base scales the whole curve (the local backend,
    where a retry needs no new pod, uses a base of 0.05 s)."""
    if failures_so_far <= 0:
        return 0.0
    scale = base / BACKOFF_BASE_SECONDS
    return float(
        min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (failures_so_far - 1)) * scale
    )


def classify_exit(exit_code: int | None) -> ExitKind:
    """The kind of failure a worker's exit code says (None: killed, lost)."""
    if exit_code == EXIT_OK:
        return ExitKind.OK
    if exit_code == EXIT_USER_ERROR:
        return ExitKind.USER
    if exit_code == EXIT_USAGE_ERROR:
        return ExitKind.USAGE
    if exit_code == EXIT_INFRA_ERROR or exit_code is None:
        return ExitKind.INFRA
    # Any other code: a crash the worker could not report (OOM kill 137, segfault...). In
    # container mode it is simply the user's command failing.
    return ExitKind.USER


def systematic_cause(
    causes: Iterable[Cause], *, any_succeeded: bool, parallelism: int
) -> Cause | None:
    """The cause to stop the task for, if the infrastructure failures seen are systematic.

    A permanent cause (bad credentials, missing bucket, wrong Python) stops it at once.
    Otherwise the same cause on the first min(SYSTEMATIC_AFTER, parallelism) attempts, with
    no index succeeded yet, does: at parallelism 4 that is the first wave of 4 pods.
    """
    counts: dict[tuple[str, str], int] = {}
    first: dict[tuple[str, str], Cause] = {}
    for cause in causes:
        if cause.key in PERMANENT_CAUSES or (cause.kind, "") in PERMANENT_CAUSES:
            return cause
        counts[cause.key] = counts.get(cause.key, 0) + 1
        first.setdefault(cause.key, cause)
    if any_succeeded:
        return None
    needed = max(2, min(SYSTEMATIC_AFTER, parallelism))
    for key, n in counts.items():
        if n >= needed and key[0] != "lost":  # lost pods (node gone) are not systematic
            return first[key]
    return None


def decisive_failure(*, allowed_failures: int | None, retries: int | None, failures: int) -> bool:
    """True when a failure now ends the task: it tolerates none, and this attempt was the
    index's last (`failures`: the user failures its slice had before; core.plan retries an
    index while failures + 1 <= retries). An unknown policy (None) never stops a slice."""
    if allowed_failures is None or retries is None:
        return False
    return allowed_failures == 0 and failures >= retries
