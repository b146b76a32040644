"""A Store in this process's memory: the same contract as S3 and files, no I/O at all.

For fast tests and dry runs. Stores opened with the same `memory://name` share their
objects (one dict per name, guarded by a lock), so a task written through one handle is read
through another, as with a real bucket. Worker processes forked later see a copy, not the
live objects: the local backend's workers need a file or S3 store.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from typing import BinaryIO, ClassVar

from kubemap.stores.base import KeyNotFound, Store, check_key, check_prefix


class _Bucket:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()


class MemoryStore(Store):
    """A prefix in an in-process bucket; `url` is memory://<name>/<prefix>."""

    _buckets: ClassVar[dict[str, _Bucket]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"memory://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        with self._registry_lock:
            self._objects = self._buckets.setdefault(bucket, _Bucket())

    @classmethod
    def named(cls, path: str) -> MemoryStore:
        bucket, _, prefix = path.strip("/").partition("/")
        return cls(bucket or "default", prefix)

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def child(self, name: str) -> MemoryStore:
        name = check_key(name.strip("/"))
        return MemoryStore(self.bucket, f"{self.prefix}/{name}" if self.prefix else name)

    def put(self, key: str, data: bytes) -> None:
        full = self._full(key)
        with self._objects.lock:
            self._objects.objects[full] = bytes(data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        full = self._full(key)
        with self._objects.lock:
            if full in self._objects.objects:
                return False
            self._objects.objects[full] = bytes(data)
            return True

    @contextlib.contextmanager
    def open_writer(self, key: str) -> Iterator[BinaryIO]:
        self._full(key)
        buffer = io.BytesIO()
        yield buffer
        self.put(key, buffer.getvalue())  # visible only once the block exits cleanly

    def get(self, key: str) -> bytes:
        with self._objects.lock:
            data = self._objects.objects.get(self._full(key))
        if data is None:
            raise KeyNotFound(f"{key!r} not found in {self.url}")
        return data

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        if start < 0 or stop < start:
            raise ValueError(f"bad byte range [{start}, {stop}) for {key!r}")
        return self.get(key)[start:stop]

    def exists(self, key: str) -> bool:
        with self._objects.lock:
            return self._full(key) in self._objects.objects

    def size(self, key: str) -> int:
        return len(self.get(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        wanted = base + prefix
        with self._objects.lock:
            keys = sorted(k[len(base) :] for k in self._objects.objects if k.startswith(wanted))
        return iter(keys)

    def delete_prefix(self, prefix: str = "") -> int:
        keys = [self._full(k) for k in self.list(prefix)]
        with self._objects.lock:
            for key in keys:
                self._objects.objects.pop(key, None)
        return len(keys)
