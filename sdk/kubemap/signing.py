"""Per-task authentication of what a worker loads (fn.pkl, its inputs) and what it writes back.

Unpickling runs code, so a worker must not unpickle bytes that only the bucket vouches for:
anyone who can write to the bucket could otherwise run code in the cluster. The SDK makes a
random 32-byte key per task, keeps it in a Kubernetes Secret ``<task>-key`` in the task's
namespace (owned by the MapTask, so it goes with it) and signs with HMAC-SHA256:

* ``fn.mac``       the MAC of fn.pkl;
* ``inputs.mac``   one 32-byte MAC per input, in index order, so a pod checks its own slice
                   with one more ranged GET, whatever N is (like inputs.idx);
* result objects   carry the MAC of their body as a 32-byte trailer, so the SDK refuses a
                   result that a bucket writer replaced.

Every MAC binds the task name and the object's role (``fn``, ``input/<i>``,
``result/<start>-<count>``): a MAC cannot be replayed onto another task, index or slice.
Worker pods get the key as ``KUBEMAP_TASK_KEY`` through ``secretKeyRef``; the operator never
reads it (its RBAC has no Secrets), it only names the Secret in the pod it builds.

Hooks this needs (not wired yet; see the issue-12 report): api.submit makes the key and passes
it to taskdata.write_function/write_inputs (which write fn.mac/inputs.mac); the kubernetes
backend creates the Secret after the MapTask and adds ``key_env(task)`` to the template's env;
worker.run_slice calls ``verify`` / ``verify_slice`` before unpickling and ``seal`` on results;
taskdata.decode_results calls ``unseal`` when a key is at hand.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from kubemap.errors import CorruptTaskError

KEY_ENV = "KUBEMAP_TASK_KEY"
KEY_FIELD = "key"
MAC_SIZE = 32
FN_MAC = "fn.mac"
INPUTS_MAC = "inputs.mac"
_DOMAIN = b"kubemap/v1\0"


class TamperedError(CorruptTaskError):
    """An object's bytes do not match the MAC the submitter made: refuse to load it."""


def new_key() -> bytes:
    return secrets.token_bytes(32)


def mac(key: bytes, task: str, role: str, data: bytes | memoryview) -> bytes:
    h = hmac.new(key, _DOMAIN + task.encode() + b"\0" + role.encode() + b"\0", hashlib.sha256)
    h.update(data)
    return h.digest()


def input_role(index: int) -> str:
    return f"input/{index}"


def result_role(start: int, count: int) -> str:
    return f"result/{start}-{count}"


def verify(key: bytes, task: str, role: str, data: bytes | memoryview, expected: bytes) -> None:
    if not hmac.compare_digest(mac(key, task, role, data), expected):
        raise TamperedError(
            f"{role} of task {task} does not match the submitter's signature: it was changed "
            "after submission (by a writer to the bucket, or the task was partly re-uploaded). "
            "Nothing was loaded; submit the task again and check who can write to the bucket"
        )


def sign_items(key: bytes, task: str, blobs: Iterable[bytes | memoryview], start: int = 0) -> bytes:
    """inputs.mac: the MACs of the pickled inputs, MAC_SIZE bytes each, in index order."""
    return b"".join(mac(key, task, input_role(start + i), b) for i, b in enumerate(blobs))


def macs_range(start: int, count: int) -> tuple[int, int]:
    """Byte range [lo, hi) of inputs.mac that holds the MACs of items start..start+count-1."""
    return start * MAC_SIZE, (start + count) * MAC_SIZE


def verify_slice(
    key: bytes, task: str, start: int, blobs: list[bytes | memoryview], macs: bytes
) -> None:
    if len(macs) != len(blobs) * MAC_SIZE:
        raise TamperedError(
            f"{INPUTS_MAC} of task {task} is too short for items {start}..{start + len(blobs) - 1}"
            f" ({len(macs)} of {len(blobs) * MAC_SIZE} bytes): submit the task again"
        )
    for i, blob in enumerate(blobs):
        verify(key, task, input_role(start + i), blob, macs[i * MAC_SIZE : (i + 1) * MAC_SIZE])


def seal(key: bytes, task: str, start: int, count: int, body: bytes) -> bytes:
    """A result object's bytes: its body, then the body's MAC."""
    return body + mac(key, task, result_role(start, count), body)


def unseal(key: bytes, task: str, start: int, count: int, sealed: bytes) -> bytes:
    if len(sealed) < MAC_SIZE:
        raise TamperedError(f"result/{start}-{count} of task {task} is too short to be signed")
    body, tag = sealed[:-MAC_SIZE], sealed[-MAC_SIZE:]
    verify(key, task, result_role(start, count), body, tag)
    return body


def key_from_env(environ: Mapping[str, str]) -> bytes | None:
    text = environ.get(KEY_ENV, "").strip()
    if not text:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise CorruptTaskError(
            f"{KEY_ENV} is not hex: the task's key Secret was edited; submit the task again"
        ) from None
    if len(key) != 32:
        raise CorruptTaskError(f"{KEY_ENV} holds {len(key)} bytes, not 32: submit the task again")
    return key


def secret_name(task: str) -> str:
    return f"{task}-key"


def key_secret(task: str, key: bytes, owner_uid: str) -> dict[str, Any]:
    """The Secret holding a task's key, owned by its MapTask (deleted with it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(task),
            "labels": {"kubemap.io/task": task},
            "ownerReferences": [
                {
                    "apiVersion": "kubemap.io/v1alpha1",
                    "kind": "MapTask",
                    "name": task,
                    "uid": owner_uid,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "stringData": {KEY_FIELD: key.hex()},
    }


def key_env(task: str) -> dict[str, Any]:
    """The worker container's env entry that brings the key in (never a plain value)."""
    return {
        "name": KEY_ENV,
        "valueFrom": {"secretKeyRef": {"name": secret_name(task), "key": KEY_FIELD}},
    }
