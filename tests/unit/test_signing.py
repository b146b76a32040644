"""Per-task MACs (kubemap.task.signing): what a bucket writer changes is caught before unpickling."""

from __future__ import annotations

import pytest
from kubemap.task import signing
from kubemap.task.results import seal_result
from kubemap.task.signing import Signer, TamperedError

KEY = bytes(range(32))


def test_function_mac_binds_task_and_bytes() -> None:
    tag = signing.mac(KEY, "t1", "fn", b"pickled")
    signing.verify(KEY, "t1", "fn", b"pickled", tag)
    for task, role, data in [
        ("t2", "fn", b"pickled"),
        ("t1", "fn", b"pickleD"),
        ("t1", "input/0", b"pickled"),
    ]:
        with pytest.raises(TamperedError, match="does not match its signature"):
            signing.verify(KEY, task, role, data, tag)
    with pytest.raises(TamperedError, match=r"^fn\.pkl of task t1 does not match"):
        signing.verify(signing.new_key(), "t1", "fn", b"pickled", tag, what="fn.pkl")


def _item_macs(blobs: list[bytes]) -> bytes:
    streamed = Signer("t", KEY).item_macs()  # how a submit makes inputs.mac
    for i, blob in enumerate(blobs):
        streamed.add(i, blob)
    return bytes(streamed.data)


def test_a_slice_is_checked_from_its_own_range_of_inputs_mac() -> None:
    blobs = [f"item{i}".encode() for i in range(10)]
    macs = _item_macs(blobs)
    assert len(macs) == 10 * signing.MAC_SIZE
    lo, hi = signing.macs_range(4, 3)
    signing.verify_slice(KEY, "t", 4, list(blobs[4:7]), macs[lo:hi])
    swapped: list[bytes | memoryview] = [blobs[5], blobs[4], blobs[6]]  # swapped by a writer
    with pytest.raises(TamperedError, match=r"input 4 \(inputs.bin\)"):
        signing.verify_slice(KEY, "t", 4, swapped, macs[lo:hi])
    with pytest.raises(TamperedError, match="too short"):
        signing.verify_slice(KEY, "t", 4, list(blobs[4:7]), macs[lo : hi - 1])


def test_streamed_item_macs_equal_the_one_by_one_macs() -> None:
    blobs = [bytes([i]) * i for i in range(50)]
    streamed = Signer("t", KEY).item_macs()
    for i, blob in enumerate(blobs):
        streamed.add(i, blob)
    one_by_one = b"".join(
        signing.mac(KEY, "t", signing.input_role(i), b) for i, b in enumerate(blobs)
    )
    assert bytes(streamed.data) == one_by_one


def test_result_objects_are_sealed_per_slice() -> None:
    sealed = seal_result(b"body", Signer("t", KEY), 0, 5)  # what a worker writes
    assert signing.unseal(KEY, "t", 0, 5, sealed) == b"body"
    with pytest.raises(TamperedError, match="result/5-5"):
        signing.unseal(KEY, "t", 5, 5, sealed)  # moved to another slice's key
    with pytest.raises(TamperedError):
        signing.unseal(KEY, "t", 0, 5, b"x" + sealed[1:])


def test_key_travels_by_secret_reference_only() -> None:
    env = signing.key_env(signing.secret_name("t"))
    assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"] == "t-key"
    owner = signing.owner_ref("MapTask", "t", "uid-1")
    secret = signing.key_secret("t-key", KEY, {"kubemap.io/task": "t"}, owner)
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert "ownerReferences" not in signing.key_secret("t-key", KEY, {})["metadata"]
    assert signing.key_from_env({signing.KEY_ENV: KEY.hex()}) == KEY
    assert signing.key_from_env({}) is None
    with pytest.raises(signing.CorruptTaskError, match="not hex"):
        signing.key_from_env({signing.KEY_ENV: "zz"})
    with pytest.raises(signing.CorruptTaskError, match="16 bytes"):
        signing.key_from_env({signing.POOL_KEY_ENV: "00" * 16}, signing.POOL_KEY_ENV)
