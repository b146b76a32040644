"""kubemap: map a Python function over a list of inputs, locally or on Kubernetes.

import kubemap
kubemap.map(lambda x: x * x, range(10))          # embedded local backend, no cluster
run = kubemap.submit(fn, inputs, backend="kubernetes", parallelism=50)
run.wait(); run.results()
"""

from kubemap.api.executor import Executor, RemoteFailure
from kubemap.api.maprun import MapRun
from kubemap.api.submit import imap, map, submit
from kubemap.errors import (
    CancelledError,
    ClusterError,
    ConfigError,
    CorruptTaskError,
    KubemapError,
    MapTaskError,
    RemoteError,
    SerializationError,
    StoreError,
    TimeoutError,
)
from kubemap.resources.maptask import Speculation
from kubemap.resources.options import RunOptions
from kubemap.task.inputfiles import File, files

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # kubemap.WorkerPool needs the Kubernetes client: import it only when asked for.
    if name == "WorkerPool":
        from kubemap.api.workerpool import WorkerPool

        return WorkerPool
    raise AttributeError(f"module 'kubemap' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy WorkerPool too: dir(kubemap) lists every public name (PEP 562).
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "CancelledError",
    "ClusterError",
    "ConfigError",
    "CorruptTaskError",
    "Executor",
    "File",
    "KubemapError",
    "MapRun",
    "MapTaskError",
    "RemoteError",
    "RemoteFailure",
    "RunOptions",
    "SerializationError",
    "Speculation",
    "StoreError",
    "TimeoutError",
    "WorkerPool",
    "__version__",
    "files",
    "imap",
    "map",
    "submit",
]
