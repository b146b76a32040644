"""The store contract, one suite for every store: a real S3 server (SeaweedFS), the local
filesystem and the in-process memory store; plus S3- and file-specific checks."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubemap.contract import INDEX_KEY, INPUTS_KEY
from kubemap.errors import ConfigError, CorruptTaskError, SerializationError, StoreError
from kubemap.stores import FileStore, KeyNotFound, Store, default_store_url, open_store
from kubemap.stores.s3 import PART_SIZE, S3Store
from kubemap.task import data as taskdata

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["file", "s3", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "file":
        yield open_store(str(tmp_path / "store"))
    elif request.param == "memory":
        yield open_store(f"memory://contract-{uuid.uuid4().hex}/store")
    else:
        yield open_store(request.getfixturevalue("s3_store_url"))


def test_put_get_range_list_delete(store: Store) -> None:
    store.put("a/one", b"0123456789")
    store.put("a/two", b"x")
    store.put("b", b"")
    store.put("a/one", b"0123456789abc")  # overwrite
    assert store.get("a/one") == b"0123456789abc"
    assert store.get("b") == b""
    assert store.get_range("a/one", 2, 5) == b"234"
    assert store.get_range("a/one", 10, 100) == b"abc"  # short read at the end
    assert store.get_range("a/one", 50, 60) == b""
    assert store.size("a/one") == 13
    assert store.exists("a/two") and not store.exists("a/three")
    assert list(store.list()) == ["a/one", "a/two", "b"]
    assert list(store.list("a/")) == ["a/one", "a/two"]
    assert list(store.list("a/t")) == ["a/two"]
    assert list(store.list("zzz/")) == []
    with pytest.raises(KeyNotFound):
        store.get("missing")
    with pytest.raises(KeyNotFound):
        store.get_range("missing", 0, 1)
    assert store.delete_prefix("a/") == 2
    assert list(store.list()) == ["b"]


def test_child_is_rooted_below(store: Store) -> None:
    child = store.child("task-1")
    assert child.url == store.url + "/task-1"
    child.put("fn.pkl", b"f")
    assert list(store.list()) == ["task-1/fn.pkl"]
    assert list(child.list()) == ["fn.pkl"]
    assert open_store(child.url).get("fn.pkl") == b"f"


def test_put_if_absent_first_writer_wins(store: Store) -> None:
    assert store.put_if_absent("results/x", b"first") is True
    assert store.put_if_absent("results/x", b"second") is False
    assert store.get("results/x") == b"first"


def test_put_if_absent_races_between_threads(store: Store) -> None:
    outcomes: list[bool] = []
    barrier = threading.Barrier(4)

    def race(n: int) -> None:
        barrier.wait()
        outcomes.append(store.put_if_absent("once", f"writer {n}".encode()))

    threads = [threading.Thread(target=race, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [False, False, False, True]
    assert store.get("once").startswith(b"writer ")


def test_open_writer_streams_and_is_invisible_until_closed(store: Store) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    total = PART_SIZE * 2 + 12345  # three multipart parts on S3
    with store.open_writer("big.bin") as out:
        written = 0
        while written < total:
            piece = chunk[: total - written]
            out.write(piece)
            written += len(piece)
        assert not store.exists("big.bin")
    assert store.size("big.bin") == total
    assert (
        store.get_range("big.bin", PART_SIZE - 2, PART_SIZE + 2)
        == (chunk * 9)[PART_SIZE - 2 : PART_SIZE + 2]
    )


def test_open_writer_failure_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.open_writer("partial.bin") as out:
        out.write(b"x" * (PART_SIZE + 1))
        raise RuntimeError("boom")
    assert not store.exists("partial.bin")
    assert list(store.list()) == []


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_inputs_round_trip(store: Store, n: int) -> None:
    items: list[Any] = [{"i": i, "s": "x" * (i % 7)} for i in range(n)]
    assert taskdata.write_inputs(store, iter(items)) == n
    assert store.size(INDEX_KEY) == 8 * (n + 1)
    assert taskdata.read_total(store) == n
    assert taskdata.read_slice(store, 0, n) == items
    if n:
        assert taskdata.read_slice(store, n - 1, 1) == items[-1:]
        assert taskdata.read_slice(store, n // 3, n // 2) == items[n // 3 : n // 3 + n // 2]
    assert taskdata.read_slice(store, n, 0) == []


def test_slice_is_two_ranged_gets(s3_store_url: str) -> None:
    store = open_store(s3_store_url)
    assert isinstance(store, S3Store)
    assert taskdata.write_inputs(store, (f"item-{i}" for i in range(5000))) == 5000
    requests: list[tuple[str, str]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        headers = params.get("headers", {})
        requests.append((model.name, str(headers.get("Range", ""))))

    store.client.meta.events.register("before-call.s3", record)
    try:
        items = taskdata.read_slice(store, 2000, 50)
    finally:
        store.client.meta.events.unregister("before-call.s3", record)
    assert items == [f"item-{i}" for i in range(2000, 2050)]
    assert [name for name, _ in requests] == ["GetObject", "GetObject"]
    assert requests[0][1] == f"bytes={2000 * 8}-{2051 * 8 - 1}"
    assert all(rng.startswith("bytes=") for _, rng in requests)


def test_unpicklable_input_is_named_and_nothing_is_left(store: Store) -> None:
    def items() -> Iterator[Any]:
        yield from range(17)
        yield threading.Lock()
        yield 18

    with pytest.raises(SerializationError) as caught:
        taskdata.write_inputs(store, items())
    assert caught.value.index == 17
    assert "input 17" in str(caught.value) and "lock" in str(caught.value)
    assert not store.exists(INDEX_KEY) and not store.exists(INPUTS_KEY)


def test_function_round_trip_and_unpicklable_function(store: Store) -> None:
    factor = 3
    taskdata.write_function(store, lambda x: x * factor)
    assert taskdata.read_function(store)(5) == 15
    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        with lock:
            return x

    with pytest.raises(SerializationError) as caught:
        taskdata.write_function(store.child("other"), uses_lock)
    assert caught.value.index is None
    assert "uses_lock" in str(caught.value) and "lock" in str(caught.value)


def test_corrupt_index_is_reported(store: Store) -> None:
    taskdata.write_inputs(store, range(10))
    store.put(INDEX_KEY, b"".join((10**6 + i).to_bytes(8, "little") for i in range(11)))
    with pytest.raises(CorruptTaskError, match=r"inputs\.bin"):
        taskdata.read_slice(store, 2, 3)
    store.put(INDEX_KEY, b"\x00" * 12)
    with pytest.raises(CorruptTaskError, match="too short"):
        taskdata.read_slice(store, 2, 3)
    with pytest.raises(CorruptTaskError, match=r"no inputs\.idx"):
        taskdata.read_slice(store.child("never"), 0, 1)


def test_results_write_once_and_iteration(store: Store) -> None:
    assert taskdata.write_results(store, 0, 4, {0: "a", 1: "b", 3: "d"}) is True
    assert taskdata.write_results(store, 0, 4, {0: "X", 1: "X", 2: "X", 3: "X"}) is False
    assert taskdata.write_results(store, 4, 4, {i: i * 10 for i in range(4, 8)}) is True
    # overlapping objects: each index is yielded once, from the object with the lowest key
    assert taskdata.write_results(store, 2, 3, {2: "c", 3: "Z", 4: "Z"}) is True
    pairs = list(taskdata.iter_results(store))
    assert len(pairs) == 8
    assert dict(pairs) == {0: "a", 1: "b", 2: "c", 3: "d", 4: "Z", 5: 50, 6: 60, 7: 70}
    assert str(taskdata.succeeded_indexes(store)) == "0-7"
    assert str(taskdata.done_in_slice(store, 0, 4)) == "0-3"
    assert str(taskdata.done_in_slice(store, 4, 4)) == "4-7"


def test_errors_round_trip(store: Store) -> None:
    taskdata.write_error(store, 7, {"type": "ValueError", "message": "bad", "traceback": "tb"})
    errors = taskdata.read_errors(store)
    assert list(errors) == [7]
    assert errors[7].type == "ValueError" and errors[7].message == "bad"


def test_meta_round_trip(store: Store) -> None:
    meta = taskdata.TaskMeta.new(12, "mod.fn")
    taskdata.write_meta(store, meta)
    assert taskdata.read_meta(store) == meta
    assert taskdata.read_total(store) == 12


def test_unreachable_endpoint_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = open_store("s3://some-bucket/p")
    with pytest.raises(StoreError) as caught:
        store.get("fn.pkl")
    message = str(caught.value)
    assert "http://127.0.0.1:1" in message and "some-bucket" in message
    assert "AWS_ENDPOINT_URL_S3" in message


def test_missing_bucket_says_create_it(s3_store_url: str) -> None:
    store = open_store("s3://no-such-bucket-kubemap/p")
    with pytest.raises(StoreError, match="create it") as caught:
        store.put("k", b"v")
    assert "no-such-bucket-kubemap" in str(caught.value)


def test_wrong_secret_says_check_keys(s3_store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StoreError, match="AWS_SECRET_ACCESS_KEY"):
        open_store(s3_store_url).put("k", b"v")


@pytest.mark.parametrize(
    "url", ["gs://bucket/x", "s3://", "s3://ab/x", "file://host/x", "http://x/y"]
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    assert repr(url) in str(caught.value)


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store(tmp_path.as_uri()), FileStore)
    assert open_store(str(tmp_path)).url == tmp_path.as_uri()
    s3 = open_store("s3://bucket-1/a/b/")
    assert isinstance(s3, S3Store) and s3.url == "s3://bucket-1/a/b"
    monkeypatch.setenv("KUBEMAP_STORE", "s3://bucket-1/p")
    assert default_store_url() == "s3://bucket-1/p"
    monkeypatch.delenv("KUBEMAP_STORE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_store_url() == (tmp_path / "cache" / "kubemap" / "store").as_uri()


MEMORY_PROBE = """
import resource, sys, time
from kubemap.task import data as taskdata
from kubemap.stores import open_store
store = open_store(sys.argv[1])
began = time.perf_counter()
n = taskdata.write_inputs(store, (f"item-{i}" for i in range(int(sys.argv[2]))))
seconds = time.perf_counter() - began
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:  # Linux keeps ru_maxrss across exec (it would count the forking pytest): use VmHWM
    with open("/proc/self/status") as status:
        peak_kib = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print(n, seconds, peak_kib)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "s3"])
def test_a_million_inputs_stream_in_bounded_memory(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Submitting 1,000,000 small inputs: whole-process peak RSS under 500 MB (it is
    ~50 MB: the offsets are one array('Q'), the bytes stream out in 4 MiB chunks)."""
    import subprocess
    import sys

    url = str(tmp_path / "store") if kind == "file" else request.getfixturevalue("s3_store_url")
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, url, "1000000"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    n, seconds, peak_kib = proc.stdout.split()
    assert int(n) == 1_000_000
    peak_mb = int(peak_kib) / 1024
    print(f"\n1,000,000 inputs to {kind}: {float(seconds):.2f} s, peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 500
    store = open_store(url)
    assert taskdata.read_total(store) == 1_000_000
    assert taskdata.read_slice(store, 999_998, 2) == ["item-999998", "item-999999"]
