"""The store contract: a prefix in an object store, behind one small interface.

`kubemap.stores.open_store(url)` returns a `Store` rooted at a prefix: `s3://bucket/prefix` (boto3; endpoint
and credentials from the standard AWS variables, e.g. AWS_ENDPOINT_URL_S3,
AWS_ACCESS_KEY_ID) or `file:///abs/path` / a plain path (the local filesystem, same layout).
Keys are relative to the prefix and use "/" separators.

CONTRACT (other modules code against exactly these signatures):

    class Store(abc.ABC):
        url: str                                   # the prefix URL, normalised
        def child(self, name: str) -> Store        # a Store rooted at <url>/<name>
        def put(self, key: str, data: bytes) -> None                 # overwrite allowed
        def put_if_absent(self, key: str, data: bytes) -> bool       # write-once (If-None-Match: *);
                                                                      # False if the key existed
        def open_writer(self, key: str) -> ContextManager[BinaryIO]  # streaming upload
                                                                      # (S3: multipart), visible on close
        def get(self, key: str) -> bytes                             # raises KeyNotFound
        def get_range(self, key: str, start: int, stop: int) -> bytes  # bytes [start, stop)
        def exists(self, key: str) -> bool
        def size(self, key: str) -> int                              # raises KeyNotFound
        def list(self, prefix: str = "") -> Iterator[str]           # keys below prefix, sorted
        def delete_prefix(self, prefix: str = "") -> int            # number of keys deleted

    class KeyNotFound(StoreError, KeyError)
    def open_store(url: str) -> Store
    def default_store_url() -> str   # $KUBEMAP_STORE, else file://<user cache dir>/kubemap/store

get_range past the end of an object returns the bytes that exist (possibly b""), like a
short read; callers that know the expected length check it. Every network failure becomes
StoreError naming the endpoint and bucket and what to check.
"""

from __future__ import annotations

import abc
import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from kubemap.contract import ENV_STORE
from kubemap.errors import StoreError

ACCEPTED_FORMS = (
    "s3://bucket/prefix, file:///absolute/path, memory://name or a local directory path"
)


class KeyNotFound(StoreError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "key not found"


class Store(abc.ABC):
    """A prefix in an object store. Keys are relative, "/"-separated, never start with "/"."""

    url: str

    @abc.abstractmethod
    def child(self, name: str) -> Store:
        """A Store rooted at <url>/<name>."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write (or overwrite) a whole object atomically."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write once: True if this call created the key, False if it already existed."""

    @abc.abstractmethod
    def open_writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Stream an object; it becomes visible when the block exits without an exception."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; KeyNotFound if it does not exist."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of the object (fewer if it ends earlier); KeyNotFound if missing."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes; KeyNotFound if missing."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys (relative to this store) that start with prefix, in sorted order."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str = "") -> int:
        """Delete every key that starts with prefix; returns how many were deleted."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def check_key(key: str) -> str:
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or any(p in ("", ".", "..") for p in parts[:-1])
        or parts[-1] in (".", "..")
    ):
        raise ValueError(f"invalid store key {key!r}: use relative 'a/b' keys without '.' or '..'")
    return key


def check_prefix(prefix: str) -> str:
    if prefix:
        check_key(prefix + ("x" if prefix.endswith("/") else ""))
    return prefix


def user_cache_dir() -> Path:
    """The platform's per-user cache directory (what platformdirs.user_cache_dir returns)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"


def default_store_url() -> str:
    """$KUBEMAP_STORE when set, else file://<user cache dir>/kubemap/store."""
    configured = os.environ.get(ENV_STORE, "").strip()
    if configured:
        return configured
    return (user_cache_dir() / "kubemap" / "store").resolve().as_uri()


__all__ = [
    "ACCEPTED_FORMS",
    "KeyNotFound",
    "Store",
    "check_key",
    "check_prefix",
    "default_store_url",
    "user_cache_dir",
]
