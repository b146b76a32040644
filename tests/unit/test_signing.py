"""Per-task MACs (kubemap.signing): what a bucket writer changes is caught before unpickling."""

from __future__ import annotations

import pytest
from kubemap import signing
from kubemap.signing import TamperedError

KEY = bytes(range(32))


def test_function_mac_binds_task_and_bytes() -> None:
    tag = signing.mac(KEY, "t1", "fn", b"pickled")
    signing.verify(KEY, "t1", "fn", b"pickled", tag)
    for task, role, data in [
        ("t2", "fn", b"pickled"),
        ("t1", "fn", b"pickleD"),
        ("t1", "input/0", b"pickled"),
    ]:
        with pytest.raises(TamperedError, match="does not match the submitter's signature"):
            signing.verify(KEY, task, role, data, tag)
    with pytest.raises(TamperedError):
        signing.verify(signing.new_key(), "t1", "fn", b"pickled", tag)


def test_a_slice_is_checked_from_its_own_range_of_inputs_mac() -> None:
    blobs = [f"item{i}".encode() for i in range(10)]
    macs = signing.sign_items(KEY, "t", blobs)
    assert len(macs) == 10 * signing.MAC_SIZE
    lo, hi = signing.macs_range(4, 3)
    signing.verify_slice(KEY, "t", 4, blobs[4:7], macs[lo:hi])
    swapped = [blobs[5], blobs[4], blobs[6]]  # two items swapped by a bucket writer
    with pytest.raises(TamperedError, match="input/4"):
        signing.verify_slice(KEY, "t", 4, swapped, macs[lo:hi])
    with pytest.raises(TamperedError, match="too short"):
        signing.verify_slice(KEY, "t", 4, blobs[4:7], macs[lo : hi - 1])


def test_result_objects_are_sealed_per_slice() -> None:
    sealed = signing.seal(KEY, "t", 0, 5, b"body")
    assert signing.unseal(KEY, "t", 0, 5, sealed) == b"body"
    with pytest.raises(TamperedError, match="result/5-5"):
        signing.unseal(KEY, "t", 5, 5, sealed)  # moved to another slice's key
    with pytest.raises(TamperedError):
        signing.unseal(KEY, "t", 0, 5, b"x" + sealed[1:])


def test_key_travels_by_secret_reference_only() -> None:
    env = signing.key_env("t")
    assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"] == "t-key"
    secret = signing.key_secret("t", KEY, "uid-1")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert signing.key_from_env({signing.KEY_ENV: KEY.hex()}) == KEY
    assert signing.key_from_env({}) is None
    with pytest.raises(signing.CorruptTaskError, match="not hex"):
        signing.key_from_env({signing.KEY_ENV: "zz"})
