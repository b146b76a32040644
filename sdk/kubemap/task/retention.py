"""How long a local run's data stays in a directory store, and removing it after that.

A successful kubemap.map / `kubemap run` on the default store deletes its task at once; a
failed or cancelled one keeps it, so that its results and error records can be read (e.g.
`kubemap.MapRun.attach(name).failures()`). Kept tasks older than the retention period
($KUBEMAP_RETENTION_DAYS, default 7) are removed at the next submit to the default store, or
now with `kubemap gc`. S3 stores are left alone: use a bucket lifecycle rule there.

Only what kubemap provably wrote is removed: a directory (never a link) with a task name,
holding a task.json of kubemap's shape and nothing but the files kubemap writes into a task.
Anything else in the store (the user's own directories, a task someone added notes to, a
link) is kept and reported. Files are removed one by one by name, and directories with
rmdir, so what appears in a task while it is removed stays too.

The per-item cache (`_cache`) is not a task: each entry goes when it has not been used for
$KUBEMAP_CACHE_DAYS (default 30), judged by the entry's own last read or write, and, when
$KUBEMAP_CACHE_MAX_GB is set, the least recently used entries go until the cache fits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kubemap.contract import (
    ERRORS_PREFIX,
    FILES_KEY,
    FN_KEY,
    INDEX_KEY,
    INPUTS_KEY,
    META_KEY,
    RESULTS_PREFIX,
    STATUS_KEY,
)
from kubemap.errors import ConfigError
from kubemap.stores import open_store
from kubemap.stores.base import user_cache_dir
from kubemap.stores.file import TMP_PREFIX
from kubemap.task.cacheentries import CACHE_DIR, CONFIG_KEY, KEYS_KEY, MAP_KEY
from kubemap.task.output import OUTPUT_NAME, OUTPUT_PREFIX
from kubemap.task.timings import TIMING_NAME, TIMINGS_PREFIX

ENV_RETENTION_DAYS = "KUBEMAP_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 7.0
ENV_CACHE_DAYS = "KUBEMAP_CACHE_DAYS"
DEFAULT_CACHE_DAYS = 30.0
ENV_CACHE_MAX_GB = "KUBEMAP_CACHE_MAX_GB"  # unset: no size cap

# What kubemap writes at the top of a task (task.data, task.meta, task.statusfile, the cache, runtime.filetransfer)
TASK_FILES = frozenset(
    {FN_KEY, INPUTS_KEY, INDEX_KEY, META_KEY, STATUS_KEY, CONFIG_KEY, KEYS_KEY, MAP_KEY, FILES_KEY}
)
# ...and the names of the records in its directories (contract.result_key, error_key,
# task.timings.timing_key)
TASK_DIRS = {
    RESULTS_PREFIX.rstrip("/"): re.compile(r"\d{12}-\d+"),
    ERRORS_PREFIX.rstrip("/"): re.compile(r"\d{12}\.json"),
    TIMINGS_PREFIX.rstrip("/"): TIMING_NAME,
    OUTPUT_PREFIX.rstrip("/"): OUTPUT_NAME,
}
TASK_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")  # DNS-1123, as options checks
META_FIELDS = ("total", "function", "created", "version")  # in every task.json kubemap wrote
HEX_NAME = re.compile(r"[0-9a-f]{32}")  # a function / program id, an item digest
SWEEP_STAMP = ".kubemap-swept"  # in _cache: when the sweep at submit last walked it
CACHE_SWEEP_EVERY = 86400.0  # the sweep at submit walks the cache at most once a day


def _days_from_env(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        days = float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number of days") from None
    if days < 0:
        raise ConfigError(f"{name}={text!r} must be >= 0")
    return days


def retention_days() -> float:
    return _days_from_env(ENV_RETENTION_DAYS, DEFAULT_RETENTION_DAYS)


def cache_days() -> float:
    return _days_from_env(ENV_CACHE_DAYS, DEFAULT_CACHE_DAYS)


def cache_max_bytes() -> int | None:
    text = os.environ.get(ENV_CACHE_MAX_GB, "").strip()
    if not text:
        return None
    try:
        size = float(text)
    except ValueError:
        raise ConfigError(f"{ENV_CACHE_MAX_GB}={text!r} is not a number of GB") from None
    if size < 0:
        raise ConfigError(f"{ENV_CACHE_MAX_GB}={text!r} must be >= 0")
    return int(size * 1e9)


def kept_note(task_url: str) -> str:
    """The sentence a failed local run prints about where its data is."""
    return (
        f"its data stays in {task_url} for {retention_days():g} days "
        f"(${ENV_RETENTION_DAYS}); `kubemap gc` removes it now"
    )


# -- recognising a task -------------------------------------------------------------------
class NotATask(Exception):
    """Why an entry of the store is not provably a task kubemap wrote."""


def _is_file(path: Path) -> bool:
    return stat.S_ISREG(os.lstat(path).st_mode)


def _created(task_dir: Path) -> dt.datetime:
    """When the task was submitted, from its task.json; NotATask unless kubemap wrote it."""
    meta = task_dir / META_KEY
    try:
        if not _is_file(meta):
            raise NotATask(f"its {META_KEY} is not a plain file")
        raw = json.loads(meta.read_bytes()[:65536])
    except FileNotFoundError:
        raise NotATask(f"not a kubemap task (no {META_KEY})") from None
    except ValueError:
        raise NotATask(f"its {META_KEY} is not kubemap's") from None
    if not isinstance(raw, dict) or any(key not in raw for key in META_FIELDS):
        raise NotATask(f"its {META_KEY} is not kubemap's")
    total = raw["total"]
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise NotATask(f"its {META_KEY} is not kubemap's")
    try:
        created = dt.datetime.fromisoformat(str(raw["created"]))
    except ValueError:
        raise NotATask(f"its {META_KEY} is not kubemap's") from None
    return created if created.tzinfo else created.replace(tzinfo=dt.UTC)


def _check_top(task_dir: Path) -> None:
    """Nothing at the top of the task but kubemap's own files and directories."""
    for entry in sorted(os.scandir(task_dir), key=lambda e: e.name):
        name = entry.name
        if entry.is_symlink():
            raise NotATask(f"{name} is a symbolic link")
        if name in TASK_DIRS:
            if not entry.is_dir(follow_symlinks=False):
                raise NotATask(f"{name} is not a directory")
        elif name in TASK_FILES or name.startswith(TMP_PREFIX):
            if not entry.is_file(follow_symlinks=False):
                raise NotATask(f"{name} is not a plain file")
        else:
            raise NotATask(f"holds {name}, which kubemap does not write")


def _records(task_dir: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
    for sub in TASK_DIRS:
        if os.path.islink(task_dir / sub):
            continue  # never listed through a link (_check_top refuses one; rmdir fails later)
        with contextlib.suppress(FileNotFoundError), os.scandir(task_dir / sub) as it:
            for entry in it:
                yield sub, entry


def _check_records(task_dir: Path) -> None:
    """results/, errors/ and timings/ hold only kubemap's record files (read before removing)."""
    for sub, entry in _records(task_dir):
        where = f"{sub}/{entry.name}"
        if entry.is_symlink():
            raise NotATask(f"{where} is a symbolic link")
        ours = TASK_DIRS[sub].fullmatch(entry.name) or entry.name.startswith(TMP_PREFIX)
        if not ours or not entry.is_file(follow_symlinks=False):
            raise NotATask(f"{where} is not a record kubemap writes")


def task_created(path: Path) -> dt.datetime:
    """When the task at `path` was submitted, if it is provably a task kubemap wrote (top
    level only; the records are checked before removal); else NotATask says why not."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        raise NotATask("a symbolic link (gc never follows links)")
    if not stat.S_ISDIR(mode):
        raise NotATask("not a directory")
    if not TASK_NAME.fullmatch(path.name):
        raise NotATask("not a task name")
    created = _created(path)
    _check_top(path)
    return created


def _remove_task(path: Path) -> None:
    """Unlink kubemap's files by name; rmdir fails on anything that appeared meanwhile."""
    for sub, entry in list(_records(path)):
        if TASK_DIRS[sub].fullmatch(entry.name) or entry.name.startswith(TMP_PREFIX):
            os.unlink(entry.path)
    for sub in TASK_DIRS:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path / sub)
    for entry in list(os.scandir(path)):
        if entry.name in TASK_FILES or entry.name.startswith(TMP_PREFIX):
            os.unlink(entry.path)
    os.rmdir(path)


# -- the cache's own rule -----------------------------------------------------------------
@dataclass(frozen=True)
class CacheSweep:
    expired: int = 0  # entries not used within the period
    evicted: int = 0  # entries removed to fit the size cap
    kept: int = 0
    kept_bytes: int = 0
    days: float = DEFAULT_CACHE_DAYS
    max_bytes: int | None = None


@dataclass(frozen=True)
class _Entry:
    path: Path
    size: int
    used: float  # last read or write: reads move atime (relatime: at most daily)


def _cache_entries(cache: Path) -> Iterator[_Entry]:
    """Entries (a hex-named file in a hex-named directory) below _cache, links not followed:
    <fn id>/<digest> and files/<program id>/<digest>. Anything else is not touched."""
    for dirpath, dirnames, filenames in os.walk(cache):  # os.walk never enters linked dirs
        if not HEX_NAME.fullmatch(os.path.basename(dirpath)):
            continue
        del dirnames[:]  # entries sit directly in their function's directory
        for name in filenames:
            if HEX_NAME.fullmatch(name):
                path = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    info = os.lstat(path)
                    if stat.S_ISREG(info.st_mode):
                        yield _Entry(path, info.st_size, max(info.st_atime, info.st_mtime))


def sweep_cache(
    root: Path,
    days: float,
    max_bytes: int | None,
    *,
    now: float | None = None,
    dry_run: bool = False,
) -> CacheSweep | None:
    """Apply the cache's rule to <root>/_cache; None when there is no cache (or it is a link,
    which is not followed)."""
    cache = root / CACHE_DIR
    try:
        if not stat.S_ISDIR(os.lstat(cache).st_mode):
            return None
    except FileNotFoundError:
        return None
    cutoff = (now if now is not None else time.time()) - days * 86400.0
    fresh: list[_Entry] = []
    expired: list[_Entry] = []
    for entry in _cache_entries(cache):
        (expired if days == 0 or entry.used < cutoff else fresh).append(entry)
    evicted: list[_Entry] = []
    if max_bytes is not None:
        fresh.sort(key=lambda e: e.used)
        total = sum(e.size for e in fresh)
        while fresh and total > max_bytes:
            oldest = fresh.pop(0)
            evicted.append(oldest)
            total -= oldest.size
    if not dry_run:
        for entry in expired + evicted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        for gone in {e.path.parent for e in expired + evicted}:
            with contextlib.suppress(OSError):
                os.rmdir(gone)  # only once empty: a new entry may have landed meanwhile
    return CacheSweep(
        expired=len(expired),
        evicted=len(evicted),
        kept=len(fresh),
        kept_bytes=sum(e.size for e in fresh),
        days=days,
        max_bytes=max_bytes,
    )


# -- the sweep ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Sweep:
    removed: list[str]
    kept: int  # tasks newer than the cutoff
    ages: dict[str, float] = field(default_factory=dict)  # removed task -> age in days
    others: list[tuple[str, str]] = field(default_factory=list)  # (entry, why it was kept)
    cache: CacheSweep | None = None


def sweep(
    store_url: str,
    older_than_days: float,
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    cache_older_than_days: float | None = None,
    cache_max: int | None = None,
    with_cache: bool = True,
) -> Sweep:
    """Remove every task of the directory store `store_url` submitted more than
    `older_than_days` ago (0: every task), and apply the cache's rule to its cache
    (`cache_older_than_days`, `cache_max` bytes; default: the environment's settings)."""
    root = _root(store_url)
    moment = now or dt.datetime.now(dt.UTC)
    cutoff = moment - dt.timedelta(days=older_than_days)
    removed: list[str] = []
    ages: dict[str, float] = {}
    others: list[tuple[str, str]] = []
    kept = 0
    cache_rule = (
        cache_days() if cache_older_than_days is None else cache_older_than_days,
        cache_max_bytes() if cache_max is None else cache_max,
    )  # read first: a bad setting is refused before anything is removed
    if not root.is_dir():
        return Sweep(removed, kept)
    for path in sorted(root.iterdir()):
        if path.name == CACHE_DIR and not path.is_symlink():
            others.append((path.name, "the per-item cache (its entries go by their own rule)"))
            continue
        try:
            created = task_created(path)
            if older_than_days != 0 and created >= cutoff:
                kept += 1
                continue
            _check_records(path)
            if not dry_run:
                _remove_task(path)
        except NotATask as why:
            others.append((path.name, str(why)))
            continue
        except FileNotFoundError:
            continue  # removed meanwhile by another process
        except OSError as exc:
            others.append((path.name, f"could not be removed: {exc.strerror or exc}"))
            continue
        removed.append(path.name)
        ages[path.name] = (moment - created).total_seconds() / 86400.0
    cache = (
        sweep_cache(root, *cache_rule, now=moment.timestamp(), dry_run=dry_run)
        if with_cache
        else None
    )
    return Sweep(removed, kept, ages, others, cache)


def builtin_store_url() -> str:
    return (user_cache_dir() / "kubemap" / "store").resolve().as_uri()


def expires(task_url: str) -> bool:
    """True for a task in the built-in default store, the one that is swept."""
    return task_url.rstrip("/").rsplit("/", 1)[0] == builtin_store_url()


def sweep_quietly(store_url: str) -> None:
    """The sweep at submit to the built-in default store (never a store the user chose,
    whose data is theirs to keep); it never fails the submit. The cache is walked at most
    once a day: it may hold many entries, and its rule is counted in days."""
    if store_url != builtin_store_url():
        return
    with contextlib.suppress(OSError, ConfigError):
        root = _root(store_url)
        stamp = root / CACHE_DIR / SWEEP_STAMP
        try:
            due = time.time() - os.lstat(stamp).st_mtime > CACHE_SWEEP_EVERY
        except FileNotFoundError:
            due = True
        sweep(store_url, retention_days(), with_cache=due)
        if due and (root / CACHE_DIR).is_dir() and not (root / CACHE_DIR).is_symlink():
            stamp.touch()


def _root(store_url: str) -> Path:
    store = open_store(store_url)
    root = getattr(store, "root", None)
    if not isinstance(root, Path):
        raise ConfigError(
            f"{store_url} is not a directory store: kubemap gc cleans local stores only "
            "(for S3, give the bucket a lifecycle rule)"
        )
    return root


# -- what gc says -------------------------------------------------------------------------
def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def report(done: Sweep, store_url: str, *, dry_run: bool = False) -> list[str]:
    """One line per task removed and per entry kept (with why), then the cache, then a
    summary: what `kubemap gc` prints."""
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {name} (submitted {done.ages[name]:.1f} days ago)" for name in done.removed]
    lines += [f"kept {name}: {why}" for name, why in done.others]
    cache = done.cache
    if cache is not None:
        line = f"{verb} {cache.expired} cache entries not used for {cache.days:g} days"
        if cache.max_bytes is not None:
            line += f", {cache.evicted} more to fit {_size(cache.max_bytes)}"
        lines.append(f"{line}; {cache.kept} kept ({_size(cache.kept_bytes)})")
    summary = f"{verb} {len(done.removed)} task(s) from {store_url}; {done.kept} newer ones kept"
    if done.others:
        summary += f"; {len(done.others)} other entries left alone"
    return [*lines, summary]
