"""task.json: the small description of a task (size, function, when, which kubemap, and the
Python and cloudpickle that pickled its function: a worker on another Python minor refuses it,
because cloudpickled code does not load across Python minors)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
import re
from dataclasses import dataclass
from typing import Any

from kubemap.contract import INDEX_ENTRY_SIZE, INDEX_KEY, META_KEY
from kubemap.errors import ConfigError, CorruptTaskError
from kubemap.stores import KeyNotFound, Store


def _kubemap_version() -> str:
    # The installed distribution's version: importing the kubemap package here would make
    # the store layer depend on the SDK surface (kubemap/__init__ imports api).
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kubemap")
    except PackageNotFoundError:
        return "unknown"


def _cloudpickle_version() -> str:
    import cloudpickle

    return str(getattr(cloudpickle, "__version__", "unknown"))


def minor(version: str) -> str:
    """ "3.11.9" -> "3.11" ("" stays "")."""
    return ".".join(version.split(".")[:2])


@dataclass(frozen=True)
class TaskMeta:
    total: int
    function: str = ""
    created: str = ""  # ISO 8601, UTC
    version: str = ""  # kubemap version that wrote the task
    mode: str = "Function"
    python: str = ""  # e.g. "3.11.9"; "" in tasks written before kubemap recorded it
    cloudpickle: str = ""
    # The failure policy a worker needs to stop its slice at a failure that decides the task
    # (core.policy.decisive_failure): retries per index and how many indices may fail for good.
    # None in tasks written before kubemap recorded them (or not by the SDK): never stop.
    retries: int | None = None
    allowed_failures: int | None = None

    @classmethod
    def new(
        cls,
        total: int,
        function: str = "",
        *,
        mode: str = "Function",
        retries: int | None = None,
        allowed_failures: int | None = None,
    ) -> TaskMeta:
        return cls(
            total=total,
            function=function,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            version=_kubemap_version(),
            mode=mode,
            python=platform.python_version(),
            cloudpickle=_cloudpickle_version(),
            retries=retries,
            allowed_failures=allowed_failures,
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


# -- version safety -----------------------------------------------------------------------
def version_mismatch(meta: TaskMeta, python: str | None = None) -> str | None:
    """Why a worker on `python` (default: this one) must refuse the task, or None.

    Only the Python minor matters: bytecode and pickled code objects change between minors,
    and a function pickled on 3.12 fails on 3.11 in ways that look like the user's bug."""
    here = python or platform.python_version()
    if not meta.python or minor(meta.python) == minor(here):
        return None
    return (
        f"task submitted from Python {meta.python} (cloudpickle {meta.cloudpickle or '?'}) "
        f"cannot run on this worker's Python {here}: run the SDK under Python {minor(here)}, "
        f"or use a worker image with Python {minor(meta.python)} (image=...)"
    )


_IMAGE_PYTHON = re.compile(r"(?:^|[/:._-])(?:python|py)[:-]?(3)\.?(\d{1,2})(?![\d])")


def image_python(image: str) -> str | None:
    """The Python minor an image's name announces (python:3.12-slim, me/app:1.0-py3.12,
    kubemap:0.1.0-py311), else None: an unknown image is checked by the worker instead."""
    tag = image.rsplit("/", 1)[-1]
    match = _IMAGE_PYTHON.search(tag)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def refuse_image_python(image_minor: str | None, where: str) -> None:
    """Refuse at submit when the worker image's Python minor is known and is not ours."""
    ours = minor(platform.python_version())
    if image_minor and minor(image_minor) != ours:
        raise ConfigError(
            f"{where} runs Python {image_minor} but this SDK runs Python {ours}: functions "
            f"pickled on {ours} do not load on {image_minor}. Run the SDK under Python "
            f"{image_minor}, or pass image= a worker image built on Python {ours}"
        )
