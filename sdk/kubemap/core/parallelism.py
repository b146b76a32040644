"""`parallelism`: how many attempts of one task run at once -- pods on a cluster, leases on
a warm pool, worker processes on this machine. It means that and nothing else; what a run
gets when its user does not say is decided here, and only here.

The size of a WorkerPool made for a task (backends.kubernetes.workerpools.new_pool_replicas)
and the number of workers a local run cuts its slices for (core.chunking.ChunkPlanner.workers)
are other quantities, with their own names.
"""

from __future__ import annotations

DEFAULT_PARALLELISM = 10  # a MapTask's spec.parallelism when it sets none (the CRD's default)
MAX_PARALLELISM = 10_000  # the most a task may ask for


def default_parallelism(*, pool: bool = False, cpus: int | None = None) -> int:
    """The parallelism of a run whose user set none: locally, the machine's `cpus` (one
    worker process each); on a warm pool no bound of the task's own (the pool's workers
    bound it); else DEFAULT_PARALLELISM pods."""
    if cpus is not None:
        return max(1, cpus)
    return MAX_PARALLELISM if pool else DEFAULT_PARALLELISM
