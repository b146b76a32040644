"""How long a local run's data stays in a directory store, and removing it after that.

A successful kubemap.map / `kubemap run` on the default store deletes its task at once; a
failed or cancelled one keeps it, so that its results and error records can be read (e.g.
`kubemap.MapRun.attach(name).failures()`). Kept tasks older than the retention period
($KUBEMAP_RETENTION_DAYS, default 7) are removed at the next submit to the default store, or
now with `kubemap gc`. S3 stores are left alone: use a bucket lifecycle rule there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kubemap.contract import META_KEY
from kubemap.errors import ConfigError
from kubemap.stores import open_store
from kubemap.stores.base import user_cache_dir

ENV_RETENTION_DAYS = "KUBEMAP_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 7.0


def retention_days() -> float:
    text = os.environ.get(ENV_RETENTION_DAYS, "").strip()
    if not text:
        return DEFAULT_RETENTION_DAYS
    try:
        days = float(text)
    except ValueError:
        raise ConfigError(f"{ENV_RETENTION_DAYS}={text!r} is not a number of days") from None
    if days < 0:
        raise ConfigError(f"{ENV_RETENTION_DAYS}={text!r} must be >= 0")
    return days


def kept_note(task_url: str) -> str:
    """The sentence a failed local run prints about where its data is."""
    return (
        f"its data stays in {task_url} for {retention_days():g} days "
        f"(${ENV_RETENTION_DAYS}); `kubemap gc` removes it now"
    )


@dataclass(frozen=True)
class Sweep:
    removed: list[str]
    kept: int


def _created(task_dir: Path) -> dt.datetime:
    """When the task was submitted: task.json's `created`, else the directory's mtime."""
    try:
        raw = json.loads((task_dir / META_KEY).read_text())
        created = dt.datetime.fromisoformat(str(raw["created"]))
        return created if created.tzinfo else created.replace(tzinfo=dt.UTC)
    except (OSError, ValueError, KeyError, TypeError):
        return dt.datetime.fromtimestamp(task_dir.stat().st_mtime, dt.UTC)


def sweep(store_url: str, older_than_days: float, *, now: dt.datetime | None = None) -> Sweep:
    """Remove every task of the directory store `store_url` submitted more than
    `older_than_days` ago (0: every task)."""
    root = _root(store_url)
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=older_than_days)
    removed: list[str] = []
    kept = 0
    if not root.is_dir():
        return Sweep(removed, kept)
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            expired = older_than_days == 0 or _created(task_dir) < cutoff
        except OSError:
            continue  # removed meanwhile by another process
        if not expired:
            kept += 1
            continue
        shutil.rmtree(task_dir, ignore_errors=True)
        removed.append(task_dir.name)
    return Sweep(removed, kept)


def builtin_store_url() -> str:
    return (user_cache_dir() / "kubemap" / "store").resolve().as_uri()


def expires(task_url: str) -> bool:
    """True for a task in the built-in default store, the one that is swept."""
    return task_url.rstrip("/").rsplit("/", 1)[0] == builtin_store_url()


def sweep_quietly(store_url: str) -> None:
    """The sweep at submit to the built-in default store (never a store the user chose,
    whose data is theirs to keep); it never fails the submit."""
    if store_url != builtin_store_url():
        return
    with contextlib.suppress(OSError, ConfigError):
        sweep(store_url, retention_days())


def _root(store_url: str) -> Path:
    store = open_store(store_url)
    root = getattr(store, "root", None)
    if not isinstance(root, Path):
        raise ConfigError(
            f"{store_url} is not a directory store: kubemap gc cleans local stores only "
            "(for S3, give the bucket a lifecycle rule)"
        )
    return root
