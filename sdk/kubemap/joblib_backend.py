"""A joblib parallel backend named "kubemap": code written for joblib (scikit-learn's
n_jobs) runs its work through kubemap.Executor, locally or on the cluster, unchanged.

    import joblib, kubemap.joblib_backend  # importing registers the backend
    with joblib.parallel_config(
        backend="kubemap", kubemap_backend="kubernetes", store="s3://b/runs"
    ):
        GridSearchCV(model, grid, n_jobs=-1).fit(X, y)

Keyword arguments of parallel_config other than joblib's own are kubemap.submit options;
`kubemap_backend` is kubemap's `backend` ("local" or "kubernetes"), since joblib's own
`backend` names this one.
joblib's auto-batching groups small calls, so a run carries many of them per item.
Installed with `pip install 'kubemap[joblib]'`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent import futures
from typing import Any

from joblib import register_parallel_backend
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

from kubemap.api.executor import Executor

__all__ = ["KubemapBackend"]

NAME = "kubemap"


class KubemapBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib batches -> kubemap.Executor futures: the backend `joblib.parallel_config(
    backend="kubemap", ...)` selects. joblib makes it; you pass its options through
    parallel_config.

    Args:
        nesting_level: joblib's own (how deep in nested Parallel calls this one is).
        **options: kubemap options (`kubemap_backend` for kubemap's `backend`, store,
            retries, image, namespace, parallelism...), as `kubemap.Executor` takes them.
    """

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1

    def __init__(self, *, nesting_level: int | None = None, **options: Any) -> None:
        super().__init__(nesting_level=nesting_level)
        self._options = options
        self._executor: Executor | None = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Workers for `n_jobs`: -1 or None means the `parallelism` option, else the CPUs.

        Args:
            n_jobs: joblib's n_jobs.
        """
        if n_jobs is None or n_jobs < 0:
            parallelism = self._options.get("parallelism") or self._options.get("max_workers")
            return int(parallelism or os.cpu_count() or 1)
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        return int(n_jobs)

    def configure(self, n_jobs: int = 1, parallel: Any = None, **_: Any) -> int:
        """Start the kubemap.Executor the batches go to; returns the number of workers.

        Args:
            n_jobs: joblib's n_jobs (the runs' parallelism unless an option gives one).
            parallel: The joblib.Parallel being run.
        """
        self.parallel = parallel
        workers = self.effective_n_jobs(n_jobs)
        options = {k: v for k, v in self._options.items() if k != "max_workers"}
        if "kubemap_backend" in options:
            options["backend"] = options.pop("kubemap_backend")
        options.setdefault("parallelism", workers)
        parallelism = options.pop("parallelism")
        self._executor = Executor(max_workers=parallelism, **options)
        return workers

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None
    ) -> futures.Future[Any]:
        """Send one joblib batch to the Executor.

        Args:
            func: The batch (a callable without arguments).
            callback: Called with the future when it is done.
        """
        if self._executor is None:
            self.configure()
        assert self._executor is not None
        future = self._executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: futures.Future[Any]) -> Any:
        """The batch's results (or its exception, raised).

        Args:
            future: The batch's future.
        """
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel every batch, also the runs already dispatched (as loky kills its workers).

        Args:
            ensure_ready: Start a fresh Executor afterwards, for the next Parallel call.
        """
        if self._executor is not None:
            # Cancels the runs already dispatched too, so their workers stop the function,
            # as loky kills its workers: no call goes on after joblib raised.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if ensure_ready:
            self.configure(
                n_jobs=self.parallel.n_jobs if self.parallel else 1, parallel=self.parallel
            )

    def terminate(self) -> None:
        """Shut the Executor down, waiting for its runs."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


register_parallel_backend(NAME, KubemapBackend)
