"""Files as inputs: `kubemap.files(pattern)` lists matching objects lazily; each is an item.

    for path in kubemap.files("s3://bucket/images/**/*.jpg"): ...
    kubemap.map(thumbnail, kubemap.files("/data/scans/*.tif"))

The listing is paged through the store layer (Store.iter_objects): one LIST page (1,000
keys on S3) is held at a time, and kubemap.submit streams the items into inputs.bin as
they come, so a million keys are never held twice. The function receives a `File`: a
small picklable record (url, key, size, content tag) that reads its object on demand.

Patterns: `*` and `?` match within one path segment, `[abc]` a character class, `**` any
number of segments (none included). A pattern without wildcards names one object, or every
object below it when it is a directory or prefix. A root that does not exist (a missing
directory; an S3 prefix with no object below it) is a ConfigError when the listing runs,
not an empty listing; a pattern that matches nothing below an existing root lists nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from kubemap.errors import ConfigError
from kubemap.stores import Store, open_store

__all__ = ["File", "FileSet", "files"]

ENV_FILES_CACHE = "KUBEMAP_FILES_CACHE"  # where File.local_path() downloads to
READ_BUFFER = 8 * 1024 * 1024  # one ranged GET per 8 MiB read by File.open()
_WILDCARDS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class File:
    """One matched object. `key` is its key in the bucket (S3) or its absolute path without
    the leading "/" (local); `tag` changes when its content does (ETag / mtime), so a cached
    result of an unchanged file is reused and a changed file runs again."""

    url: str
    key: str
    size: int
    tag: str = ""
    root: str = field(default="", repr=False)  # the store the key is relative to

    @property
    def name(self) -> str:
        """The last segment of the key: "b.jpg" for images/a/b.jpg."""
        return self.key.rsplit("/", 1)[-1]

    def _store(self) -> Store:
        return open_store(self.root)

    def _local(self) -> Path | None:
        return Path("/" + self.key) if self.root.startswith("file:") else None

    def read(self) -> bytes:
        """The whole object."""
        local = self._local()
        return local.read_bytes() if local is not None else self._store().get(self.key)

    def open(self) -> BinaryIO:
        """A streaming, seekable binary reader (ranged GETs of 8 MiB on S3)."""
        local = self._local()
        if local is not None:
            return open(local, "rb")
        raw = _RangeReader(self._store(), self.key, self.size)
        return io.BufferedReader(raw, buffer_size=READ_BUFFER)

    def local_path(self) -> Path:
        """A path on this machine holding the object: the file itself when local, else a
        copy downloaded on first use into $KUBEMAP_FILES_CACHE (default: the temp dir)."""
        local = self._local()
        if local is not None:
            return local
        base = Path(
            os.environ.get(ENV_FILES_CACHE) or Path(tempfile.gettempdir()) / "kubemap-files"
        )
        digest = hashlib.sha256(f"{self.url}\0{self.tag}\0{self.size}".encode()).hexdigest()
        path = base / digest[:24] / self.name
        if path.is_file() and path.stat().st_size == self.size:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{self.name}.{os.getpid()}.part")
        try:
            with self.open() as src, open(tmp, "wb") as out:
                while chunk := src.read(READ_BUFFER):
                    out.write(chunk)
            os.replace(tmp, path)  # a reader never sees half a download
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return path


class _RangeReader(io.RawIOBase):
    """An object read through Store.get_range, so any store streams the same way."""

    def __init__(self, store: Store, key: str, size: int) -> None:
        super().__init__()
        self._store, self._key, self._size, self._pos = store, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), max(0, self._size - self._pos))
        if want == 0:
            return 0
        data = self._store.get_range(self._key, self._pos, self._pos + want)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


@dataclass(frozen=True)
class FileSet:
    """The files matching a pattern, listed anew (page by page) each time it is iterated."""

    pattern: str
    root: str  # "s3://bucket" or "file:///"
    prefix: str  # the literal start of the pattern: what the store lists
    matcher: re.Pattern[str] | None  # None: no wildcards, the prefix names the object(s)

    def __iter__(self) -> Iterator[File]:
        # A root that does not exist is an error, not an empty listing: a typo in a path
        # must not look like a directory with nothing to do.
        store = open_store(self.root)
        local = self.root.startswith("file:")
        if local:
            self._check_local_root()
        listed = matched = 0
        for obj in store.iter_objects(self.prefix):
            listed += 1
            if self._matches(obj.key):
                matched += 1
                url = self.root + obj.key if self.root.endswith("/") else f"{self.root}/{obj.key}"
                yield File(url=url, key=obj.key, size=obj.size, tag=obj.tag, root=self.root)
        if not local and not matched:
            self._check_s3_root(store, listed)

    def _matches(self, key: str) -> bool:
        if self.matcher is not None:
            return self.matcher.fullmatch(key) is not None
        literal = self.prefix.rstrip("/")
        return key == literal or key.startswith(literal + "/") or self.prefix.endswith("/")

    def _check_local_root(self) -> None:
        if self.matcher is None:  # the path names the file or directory itself
            named = Path("/" + self.prefix.rstrip("/"))
            if not named.exists():
                raise ConfigError(
                    f"kubemap.files({self.pattern!r}): {named} does not exist; check the "
                    "path (a relative path is taken from the current directory)"
                )
            return
        base = Path("/" + self.prefix.rpartition("/")[0])
        if not base.is_dir():
            raise ConfigError(
                f"kubemap.files({self.pattern!r}): directory {base} does not exist; check the "
                "path (a relative path is taken from the current directory)"
            )

    def _check_s3_root(self, store: Store, listed: int) -> None:
        """Nothing matched: an error when the prefix the pattern names holds no object at all
        (S3 has no directories; an object below a prefix is what makes it exist)."""
        if self.matcher is None:
            raise ConfigError(
                f"kubemap.files({self.pattern!r}): no object at or below "
                f"{self.root}/{self.prefix.rstrip('/')}; check the bucket and the prefix"
            )
        base = self.prefix.rpartition("/")[0] + "/"
        if base == "/" or listed:
            return  # the bucket itself, or objects were listed below the base
        if base != self.prefix and next(store.iter_objects(base), None) is not None:
            return  # one more LIST, only when nothing was listed
        raise ConfigError(
            f"kubemap.files({self.pattern!r}): no object below {self.root}/{base}; check the "
            "bucket and the prefix"
        )

    def __repr__(self) -> str:
        return f"kubemap.files({self.pattern!r})"


def files(pattern: str) -> FileSet:
    """The objects matching `pattern` (s3://bucket/prefix/**/*.jpg, file:///dir/*.txt or a
    local path), as an iterable of File, listed lazily page by page."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError(
            "kubemap.files needs a pattern such as 's3://bucket/images/**/*.jpg' or '/data/*.csv'"
        )
    text = pattern.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        bucket, path = parts.netloc, unquote(parts.path).lstrip("/")
        if len(bucket) < 3:
            raise ConfigError(
                f"bad S3 pattern {pattern!r}: expected s3://bucket/prefix/**/*.ext with a "
                "bucket name of 3 to 63 characters"
            )
        root = f"s3://{bucket}"
    elif scheme == "file" or not scheme or len(scheme) == 1:
        if scheme == "file" and parts.netloc not in ("", "localhost"):
            raise ConfigError(
                f"bad file pattern {pattern!r}: file URLs need an absolute path, e.g. "
                "file:///data/*.csv (three slashes)"
            )
        local = unquote(parts.path) if scheme == "file" else os.path.expanduser(text)
        path, root = os.path.abspath(local).lstrip("/"), "file:///"
        if text.endswith("/") and not path.endswith("/"):
            path += "/"
    else:
        raise ConfigError(
            f"unsupported pattern {pattern!r}: use s3://bucket/prefix/**/*.ext, "
            "file:///dir/*.ext or a local path"
        )
    wildcard = _WILDCARDS.search(path)
    if wildcard is None:
        return FileSet(pattern=text, root=root, prefix=path, matcher=None)
    return FileSet(
        pattern=text, root=root, prefix=path[: wildcard.start()], matcher=glob_regex(path)
    )


def glob_regex(pattern: str) -> re.Pattern[str]:
    """`**` spans segments, `*` and `?` stay within one, `[...]` is a character class."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            body = re.escape(body[1:] if negate else body).replace(r"\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))
