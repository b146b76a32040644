"""Names shared by the SDK, the worker, the operator and the chart.

Everything here is part of the contract between these parties: changing a value breaks pods,
stores or clusters created by another version, so change it only with a migration.
"""

from __future__ import annotations

from hashlib import sha256
from typing import Final

# --- Custom resource -------------------------------------------------------------
GROUP: Final = "kubemap.io"
MAX_TASK_NAME: Final = 40  # DNS-1123, and short enough for the pod names made from it
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "MapTask"
PLURAL: Final = "maptasks"
SINGULAR: Final = "maptask"
SHORT_NAME: Final = "mt"

# --- Labels, annotations and finalizers on child pods ---------------------------
LABEL_TASK: Final = "kubemap.io/task"
LABEL_INDEX: Final = "kubemap.io/index"
ANNOTATION_COUNT: Final = "kubemap.io/count"
ANNOTATION_ATTEMPT: Final = "kubemap.io/attempt"
ANNOTATION_FAILURES: Final = "kubemap.io/failures"  # user failures of the slice before this pod
ANNOTATION_INFRA: Final = "kubemap.io/infra-failures"  # infrastructure failures before it
# A speculative copy of a straggling pod's slice (kubemap.core.speculation): "true".
ANNOTATION_BACKUP: Final = "kubemap.io/backup"
# On a MapTask: rerun the indices without a result when its value changes (any new token),
# e.g. `kubectl annotate mt NAME kubemap.io/retry=2 --overwrite`. The operator records the
# token it honoured in status.retryToken, so a token is honoured once.
ANNOTATION_RETRY: Final = "kubemap.io/retry"
POD_FINALIZER: Final = "kubemap.io/tracking"

# --- Environment of a worker pod -------------------------------------------------
ENV_INDEX: Final = "KUBEMAP_INDEX"  # first index of the pod's slice
ENV_COUNT: Final = "KUBEMAP_COUNT"  # number of indices in the slice
ENV_TOTAL: Final = "KUBEMAP_TOTAL"  # number of items in the task
ENV_ITEM: Final = "KUBEMAP_ITEM"  # container mode, inline items: the item at ENV_INDEX
ENV_ITEMS: Final = "KUBEMAP_ITEMS"  # container mode, inline items: JSON list of the slice
ENV_TASK_URL: Final = "KUBEMAP_TASK_URL"  # the task's prefix: s3://bucket/prefix/<task>
ENV_STORE: Final = "KUBEMAP_STORE"  # SDK default store URL (a prefix, tasks go below it)
ENV_ATTEMPT: Final = "KUBEMAP_ATTEMPT"  # 0 for the first run of a slice
# How often the slice failed in the user's function so far (the attempt number also counts
# lost pods): whether a failure now decides a fail-fast task. Absent: the attempt number.
ENV_FAILURES: Final = "KUBEMAP_FAILURES"
# Where the worker writes its one-line outcome summary; the kubelet copies the file
# into the pod's status (state.terminated.message) so the operator needs no S3 access.
ENV_TERMINATION_LOG: Final = "KUBEMAP_TERMINATION_LOG"
ENV_POOL_PACKAGES: Final = "KUBEMAP_POOL_PACKAGES"  # JSON list: a WorkerPool's spec.packages
ENV_PACKAGE_CACHE: Final = "KUBEMAP_PACKAGE_CACHE"  # where pool workers install them (an emptyDir)
DEFAULT_TERMINATION_LOG: Final = "/dev/termination-log"

# --- Worker exit codes --------------------------------------------------------------
# The operator retries infrastructure failures freely (within a bound) but spends an
# index's retries only on user failures; a usage error is never worth retrying.
EXIT_OK: Final = 0
EXIT_USER_ERROR: Final = 3  # the user's function raised for at least one index
EXIT_INFRA_ERROR: Final = 4  # store unreachable, corrupt input, missing function
EXIT_USAGE_ERROR: Final = 5  # the pod's environment breaks the contract

# --- Storage layout (one task = one prefix) -------------------------------------
FN_KEY: Final = "fn.pkl"
INPUTS_KEY: Final = "inputs.bin"
INDEX_KEY: Final = "inputs.idx"
META_KEY: Final = "task.json"  # small JSON: total, created, fn name, kubemap version
STATUS_KEY: Final = "status.json"  # how a run no API server records ended (local runs)
FILES_KEY: Final = "files.json"  # a files task: what its listing pod found
RESULTS_PREFIX: Final = "results/"
ERRORS_PREFIX: Final = "errors/"
INDEX_ENTRY_SIZE: Final = 8  # little-endian uint64 offsets, N+1 of them


def result_key(start: int, count: int) -> str:
    """Key of the write-once result object of the slice [start, start+count)."""
    return f"{RESULTS_PREFIX}{start:012d}-{count}"


def error_key(index: int) -> str:
    """Key of the failure record (JSON) of one index."""
    return f"{ERRORS_PREFIX}{index:012d}.json"


def parse_result_key(key: str) -> tuple[int, int]:
    """Inverse of result_key: (start, count) from a key relative to the task prefix."""
    name = key.rsplit("/", 1)[-1]
    start_text, count_text = name.split("-", 1)
    return int(start_text), int(count_text)


def parse_error_key(key: str) -> int:
    name = key.rsplit("/", 1)[-1]
    return int(name.removesuffix(".json"))


# --- Label values ------------------------------------------------------------------
MAX_LABEL_VALUE: Final = 63


def name_digest(text: str, length: int = 8) -> str:
    return sha256(text.encode()).hexdigest()[:length]


def task_label(task_name: str) -> str:
    """The kubemap.io/task label value: the task name, hashed down if over 63 characters."""
    if len(task_name) <= MAX_LABEL_VALUE:
        return task_name
    return f"{task_name[: MAX_LABEL_VALUE - 9].rstrip('-.')}-{name_digest(task_name)}"
