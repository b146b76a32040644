"""Object stores behind one contract (`kubemap.stores.base.Store`), and the factory.

    open_store("s3://bucket/prefix")      S3 or S3-compatible (boto3, imported on first use)
    open_store("file:///abs/path")        a local directory, same layout
    open_store("memory://name")           in this process only: fast tests, dry runs

Every implementation passes the same contract suite (tests/integration/test_store_contract.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kubemap.errors import ConfigError
from kubemap.stores.base import ACCEPTED_FORMS, KeyNotFound, Store, default_store_url
from kubemap.stores.file import FileStore
from kubemap.stores.memory import MemoryStore


def open_store(url: str) -> Store:
    """A Store for s3://bucket/prefix, file:///abs/path, memory://name or a plain local path."""
    text = url.strip()
    if not text:
        raise ConfigError(f"empty store URL: use {ACCEPTED_FORMS}")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        bucket = parts.netloc
        if len(bucket) < 3 or "/" in bucket or parts.query or parts.fragment:
            raise ConfigError(
                f"bad S3 store URL {url!r}: expected s3://bucket/prefix with a bucket name of "
                "3 to 63 characters (lowercase letters, digits, '-' and '.')"
            )
        # boto3 takes ~0.3 s to import: only S3 users pay for it.
        from kubemap.stores.s3 import S3Store

        return S3Store(bucket, parts.path.strip("/"))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(
                f"bad file store URL {url!r}: file URLs need an absolute path, e.g. "
                f"file:///tmp/kubemap (three slashes), or give the plain path instead"
            )
        return FileStore(Path(unquote(parts.path)))
    if scheme == "memory":
        return MemoryStore.named(parts.netloc + parts.path)
    if scheme and len(scheme) > 1:  # one letter: a Windows drive such as C:\data
        raise ConfigError(f"unsupported store URL {url!r}: use {ACCEPTED_FORMS}")
    return FileStore(Path(os.path.expanduser(text)))


__all__ = [
    "FileStore",
    "KeyNotFound",
    "MemoryStore",
    "Store",
    "default_store_url",
    "open_store",
]
