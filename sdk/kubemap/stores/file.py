"""The local filesystem as a Store: the same layout as S3, one file per key.

Writes go to a temporary file in the same directory and are renamed into place, so a reader
never sees half an object; write-once uses a hard link (or O_EXCL), so the first writer wins
even between processes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kubemap.errors import StoreError
from kubemap.stores.base import KeyNotFound, Store, check_key, check_prefix

TMP_PREFIX = ".kubemap-tmp-"
_CHUNK = 1 << 20


class FileStore(Store):
    """A directory as a Store; `url` is its file:// URI."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(str(root))))
        self.url = self.root.as_uri()

    def child(self, name: str) -> FileStore:
        return FileStore(self.root / check_key(name.strip("/")))

    # -- helpers -------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _fail(self, action: str, key: str, exc: OSError) -> StoreError:
        reason = exc.strerror or str(exc)
        return StoreError(
            f"cannot {action} {key!r} in local store {self.url}: {reason}; "
            "check that the directory exists and is writable, or choose another with "
            "--store / KUBEMAP_STORE"
        )

    def _tmp_for(self, path: Path) -> Path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail("create the directory of", path.name, exc) from exc
        return path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"

    def _write_tmp(self, key: str, data: bytes) -> Path:
        tmp = self._tmp_for(self._path(key))
        try:
            with open(tmp, "wb") as out:
                out.write(data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise self._fail("write", key, exc) from exc
        return tmp

    # -- Store ---------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        tmp = self._write_tmp(key, data)
        try:
            os.replace(tmp, self._path(key))
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise self._fail("write", key, exc) from exc

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_tmp(key, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise self._fail("write", key, exc) from exc
            return self._create_exclusive(key, path, data)  # no hard links on this filesystem
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _create_exclusive(self, key: str, path: Path, data: bytes) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._fail("write", key, exc) from exc
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return True

    @contextlib.contextmanager
    def open_writer(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        tmp = self._tmp_for(path)
        try:
            with open(tmp, "wb", buffering=_CHUNK) as out:
                yield out
            os.replace(tmp, path)
        except OSError as exc:
            raise self._fail("write", key, exc) from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise KeyNotFound(f"{key!r} not found in {self.url}") from None
        except OSError as exc:
            raise self._fail("read", key, exc) from exc

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        if start < 0 or stop < start:
            raise ValueError(f"bad byte range [{start}, {stop}) for {key!r}")
        try:
            with open(self._path(key), "rb") as src:
                src.seek(start)
                return src.read(stop - start)
        except (FileNotFoundError, NotADirectoryError):
            raise KeyNotFound(f"{key!r} not found in {self.url}") from None
        except OSError as exc:
            raise self._fail("read", key, exc) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            raise KeyNotFound(f"{key!r} not found in {self.url}") from None
        except OSError as exc:
            raise self._fail("stat", key, exc) from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        # S3 prefixes are plain string prefixes: walk the deepest directory they name.
        directory, _, _ = prefix.rpartition("/")
        base = self.root / directory if directory else self.root
        if not base.is_dir():
            return iter(())
        keys: list[str] = []
        root_len = len(str(self.root)) + 1
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = dirpath[root_len:].replace(os.sep, "/") if dirpath != str(self.root) else ""
            if (
                rel_dir
                and not (rel_dir + "/").startswith(prefix)
                and not prefix.startswith(rel_dir + "/")
            ):
                dirnames.clear()
                continue
            for name in filenames:
                if name.startswith(TMP_PREFIX):
                    continue
                key = f"{rel_dir}/{name}" if rel_dir else name
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        return iter(keys)

    def delete_prefix(self, prefix: str = "") -> int:
        deleted = 0
        for key in list(self.list(prefix)):
            with contextlib.suppress(FileNotFoundError):
                self._path(key).unlink()
                deleted += 1
        self._prune_empty_dirs()
        return deleted

    def _prune_empty_dirs(self) -> None:
        if not self.root.is_dir():
            return
        for dirpath, _dirnames, _filenames in os.walk(self.root, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)  # fails, as wanted, when not empty (the root included)
