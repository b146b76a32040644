"""task.json: the small description of a task (size, function, when, which kubemap)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from kubemap.contract import INDEX_ENTRY_SIZE, INDEX_KEY, META_KEY
from kubemap.errors import CorruptTaskError
from kubemap.stores import KeyNotFound, Store


def _kubemap_version() -> str:
    # The installed distribution's version: importing the kubemap package here would make
    # the store layer depend on the SDK surface (kubemap/__init__ imports api).
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kubemap")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class TaskMeta:
    total: int
    function: str = ""
    created: str = ""  # ISO 8601, UTC
    version: str = ""  # kubemap version that wrote the task
    mode: str = "Function"

    @classmethod
    def new(cls, total: int, function: str = "", *, mode: str = "Function") -> TaskMeta:
        return cls(
            total=total,
            function=function,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            version=_kubemap_version(),
            mode=mode,
        )

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str, where: str = META_KEY) -> TaskMeta:
        try:
            raw: Any = json.loads(data)
            known = {f.name for f in dataclasses.fields(cls)}
            meta = cls(**{k: v for k, v in raw.items() if k in known})
            if not isinstance(meta.total, int) or meta.total < 0:
                raise ValueError(f"total must be a non-negative integer, not {meta.total!r}")
        except (ValueError, TypeError, AttributeError) as exc:
            raise CorruptTaskError(f"{where} is not a valid task description: {exc}") from exc
        return meta


def write_meta(store: Store, meta: TaskMeta) -> None:
    store.put(META_KEY, meta.to_json())


def read_meta(store: Store) -> TaskMeta:
    try:
        data = store.get(META_KEY)
    except KeyNotFound:
        raise CorruptTaskError(
            f"task {store.url} has no {META_KEY}: it was never submitted completely"
        ) from None
    return TaskMeta.from_json(data, f"{store.url}/{META_KEY}")


def read_total(store: Store) -> int:
    """N, from task.json, else from the size of inputs.idx."""
    try:
        return TaskMeta.from_json(store.get(META_KEY), f"{store.url}/{META_KEY}").total
    except KeyNotFound:
        pass
    try:
        size = store.size(INDEX_KEY)
    except KeyNotFound:
        raise CorruptTaskError(
            f"task {store.url} has neither {META_KEY} nor {INDEX_KEY}: it does not exist or "
            "was never submitted completely"
        ) from None
    if size < INDEX_ENTRY_SIZE or size % INDEX_ENTRY_SIZE:
        raise CorruptTaskError(f"{store.url}/{INDEX_KEY} has a bad size ({size} bytes)")
    return size // INDEX_ENTRY_SIZE - 1
