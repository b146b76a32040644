"""Writing a task before a run starts: check the arguments, name the task, pick the store,
sign, write its files.

Kubernetes runs are signed (kubemap.task.signing): the backend hands out the task's signer before
anything is uploaded, and fn.pkl and the inputs are written with their MACs.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from kubemap.backends import Backend, get_backend
from kubemap.contract import MAX_TASK_NAME, META_KEY
from kubemap.core.policy import FailureBudget
from kubemap.errors import ConfigError, StoreError
from kubemap.resources.options import RunOptions
from kubemap.stores import Store, default_store_url, open_store
from kubemap.task import retention
from kubemap.task.data import write_function, write_inputs
from kubemap.task.meta import TaskMeta, write_meta
from kubemap.task.signing import Signer

SUFFIX_HEX = 8


@runtime_checkable
class SigningBackend(Protocol):
    """A backend whose workers check what they load: it makes the task's signer."""

    def task_signer(self, name: str, options: RunOptions) -> Signer: ...


def upload(
    fn: Callable[..., Any], inputs: Iterable[Any], opts: RunOptions
) -> tuple[Backend, Store, str, int]:
    """Check the arguments, write the task's files; (backend, task, name, number of inputs)."""
    if not callable(fn):
        raise ConfigError(f"fn must be callable, got {type(fn).__name__}: pass a function")
    if isinstance(inputs, (str, bytes)):
        raise ConfigError(
            "inputs is a single string: pass a list of inputs, e.g. [text] or text.split()"
        )
    try:
        iter(inputs)
    except TypeError:
        raise ConfigError(
            f"inputs must be iterable (a list, range, generator...), got {type(inputs).__name__}"
        ) from None
    backend = get_backend(opts.backend)
    name = opts.name or task_name(fn)
    # Kubernetes: the chart's default store (kubemap-defaults ConfigMap), its image's Python.
    found = backend.discover(opts)
    store_url = opts.store or (found.url if found else None) or default_store_url()
    retention.sweep_quietly(store_url)  # failed local runs' data expires (kubemap gc)
    backend.preflight(store_url, opts)
    # The chart's store through the chart's endpoint, passed to its client, never os.environ.
    task = (found or open_store(store_url)).child(name)
    if opts.name and task.exists(META_KEY):
        raise ConfigError(
            f"a task named {name!r} already exists in {task.url}: pick another name, or delete "
            "it with MapRun.attach(name, store=...).delete()"
        )
    signer = backend.task_signer(name, opts) if isinstance(backend, SigningBackend) else None
    try:
        write_function(task, fn, signer)
        total = write_inputs(task, inputs, signer)
        # The failure policy too: a worker stops its slice at a failure that decides the task.
        allowed = FailureBudget.of(total, min_success_ratio=opts.min_success_ratio).allowed
        meta = TaskMeta.new(total, _qualname(fn), retries=opts.retries, allowed_failures=allowed)
        write_meta(task, meta)
    except BaseException:
        forget(task)
        raise
    return backend, task, name, total


def forget(task: Store) -> None:
    with contextlib.suppress(StoreError):
        task.delete_prefix()


def _qualname(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}:{qual}" if module else str(qual)


def slugify(text: str) -> str:
    """Lowercase DNS-1123 label characters only: "my_func" -> "my-func"."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug


def task_name(fn: Any, suffix: str | None = None) -> str:
    """`<function name slug>-<8 random hex>`, at most 40 characters, DNS-1123."""
    raw = getattr(fn, "__name__", None) or type(fn).__name__
    slug = slugify("lambda" if raw == "<lambda>" else str(raw)) or "map"
    slug = slug[: MAX_TASK_NAME - SUFFIX_HEX - 1].rstrip("-") or "map"
    return f"{slug}-{suffix or secrets.token_hex(SUFFIX_HEX // 2)}"
