"""The task data codec over an in-memory Store (the real stores: tests/integration)."""

from __future__ import annotations

import pickle
import sys
import threading
import types
import uuid
from typing import Any

import cloudpickle
import pytest
from kubemap import stores
from kubemap.contract import FN_KEY, INDEX_KEY, INPUTS_KEY, META_KEY, result_key
from kubemap.core.ranges import IndexRanges
from kubemap.errors import CorruptTaskError, SerializationError
from kubemap.task import data as taskdata
from kubemap.task import pickling


class MemoryStore(stores.MemoryStore):
    """The real in-memory store on a bucket of its own, counting reads (key, start, stop)."""

    def __init__(self, bucket: str | None = None, prefix: str = "") -> None:
        super().__init__(bucket or f"taskdata-{uuid.uuid4().hex}", prefix)
        self.reads: list[tuple[str, int, int]] = []

    @property
    def data(self) -> dict[str, bytes]:
        """The bucket's objects themselves (tests corrupt them in place)."""
        return self._objects.objects

    def child(self, name: str) -> MemoryStore:
        return MemoryStore(self.bucket, f"{self.prefix}/{name}" if self.prefix else name)

    def get(self, key: str) -> bytes:
        value = super().get(key)
        self.reads.append((key, 0, len(value)))
        return value

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        value = super().get(key)[start:stop]
        self.reads.append((key, start, stop))
        return value


class Local:  # a class of a module the worker cannot import
    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Local) and other.v == self.v


@pytest.mark.parametrize("n", [0, 1, 2, 57])
def test_inputs_layout(n: int) -> None:
    store = MemoryStore()
    items = [("item", i, "x" * i) for i in range(n)]
    assert taskdata.write_inputs(store, iter(items)) == n
    offsets = [
        int.from_bytes(store.data[INDEX_KEY][i : i + 8], "little") for i in range(0, 8 * (n + 1), 8)
    ]
    assert offsets[0] == 0 and offsets[-1] == len(store.data[INPUTS_KEY])
    assert offsets == sorted(offsets)
    for i in range(n):  # each item is one pickle between its offsets
        assert pickle.loads(store.data[INPUTS_KEY][offsets[i] : offsets[i + 1]]) == items[i]


@pytest.mark.parametrize(("start", "count"), [(0, 10), (3, 4), (9, 1), (0, 1), (5, 0)])
def test_read_slice_is_two_ranged_reads(start: int, count: int) -> None:
    store = MemoryStore()
    taskdata.write_inputs(store, [f"v{i}" for i in range(10)])
    store.reads.clear()
    assert taskdata.read_slice(store, start, count) == [
        f"v{i}" for i in range(start, start + count)
    ]
    if count:
        assert [key for key, _, _ in store.reads] == [INDEX_KEY, INPUTS_KEY]
        assert store.reads[0][1:] == (8 * start, 8 * (start + count + 1))
    else:
        assert store.reads == []


@pytest.mark.parametrize(
    ("mangle", "complaint"),
    [
        (lambda d: d.pop(INDEX_KEY), "no inputs.idx"),
        (lambda d: d.pop(INPUTS_KEY), "no inputs.bin"),
        (lambda d: d.__setitem__(INDEX_KEY, d[INDEX_KEY][:20]), "too short"),
        (lambda d: d.__setitem__(INPUTS_KEY, d[INPUTS_KEY][:5]), "ends before"),
        (
            lambda d: d.__setitem__(INDEX_KEY, (9).to_bytes(8, "little") + d[INDEX_KEY][8:]),
            "out of order",
        ),
        (lambda d: d.__setitem__(INDEX_KEY, b"\xff" * 40), "far past"),
        (lambda d: d.__setitem__(INPUTS_KEY, b"\x00" * len(d[INPUTS_KEY])), "cannot load input"),
    ],
)
def test_corrupt_inputs_are_named(mangle: Any, complaint: str) -> None:
    store = MemoryStore()
    taskdata.write_inputs(store, [1, 2, 3, 4])
    mangle(store.data)
    with pytest.raises(CorruptTaskError, match=complaint):
        taskdata.read_slice(store, 0, 3)


def test_slice_past_the_total_is_refused() -> None:
    store = MemoryStore()
    taskdata.write_inputs(store, [1, 2])
    with pytest.raises(CorruptTaskError, match="past the end"):
        taskdata.read_slice(store, 1, 2, total=2)
    with pytest.raises(ValueError):
        taskdata.read_slice(store, -1, 1)


def test_unpicklable_input_names_index_and_type_and_leaves_no_index() -> None:
    store = MemoryStore()
    with pytest.raises(SerializationError) as caught:
        taskdata.write_inputs(store, [1, 2, threading.Lock()])
    assert caught.value.index == 2
    assert str(caught.value).startswith("input 2 (type _thread.lock) cannot be pickled")
    assert INDEX_KEY not in store.data and INPUTS_KEY not in store.data


def test_fast_pickle_path_and_cloudpickle_fallback() -> None:
    encode = pickling.item_encoder()
    assert encode(5) == pickle.dumps(5, protocol=5)  # stdlib path for plain data
    closure = lambda x: x + 1  # noqa: E731 - stdlib pickle cannot do lambdas
    assert pickle.loads(encode(closure))(1) == 2
    main_module = types.ModuleType("__main__")

    class FromMain:
        pass

    FromMain.__module__ = "__main__"
    FromMain.__qualname__ = "FromMain"
    real_main = sys.modules["__main__"]
    try:
        main_module.FromMain = FromMain  # type: ignore[attr-defined]
        sys.modules["__main__"] = main_module
        data = encode(FromMain())
    finally:
        sys.modules["__main__"] = real_main
    # stdlib pickle would have written a reference to __main__.FromMain, which a worker's
    # __main__ lacks (as the real one here does): the encoder embedded the class instead
    assert not hasattr(real_main, "FromMain")
    assert type(pickle.loads(data)).__name__ == "FromMain"


@pytest.mark.parametrize(
    ("module", "by_value"),
    [
        ("__main__", False),  # cloudpickle embeds __main__ by itself
        ("os.path", False),
        ("json", False),
        ("kubemap.runtime.worker", False),
        ("pytest", False),  # installed from a distribution
        (__name__, True),  # this test module is not installed anywhere
        ("not_imported_anywhere", False),
        (None, False),
    ],
)
def test_which_modules_travel_by_value(module: str | None, by_value: bool) -> None:
    assert pickling.needs_pickle_by_value(module) is by_value


def test_function_of_a_test_module_is_embedded() -> None:
    store = MemoryStore()
    taskdata.write_function(store, make_local)
    top = __name__.split(".", 1)[0]
    assert top in cloudpickle.list_registry_pickle_by_value()
    # the pickle must not need this module to be importable
    assert __name__.encode() not in store.data[FN_KEY] or b"_make_function" in store.data[FN_KEY]
    assert taskdata.read_function(store)(3) == Local(3)
    inputs = MemoryStore()
    taskdata.write_inputs(inputs, [Local(1)])
    assert b"_make_skeleton_class" in inputs.data[INPUTS_KEY]


def make_local(v: int) -> Local:
    return Local(v)


def test_unpicklable_function_is_named() -> None:
    lock = threading.Lock()

    def holds_lock(x: int) -> int:
        with lock:
            return x

    with pytest.raises(SerializationError) as caught:
        taskdata.write_function(MemoryStore(), holds_lock)
    assert caught.value.index is None
    assert "holds_lock" in str(caught.value) and "lock" in str(caught.value)
    with pytest.raises(SerializationError, match="not callable"):
        taskdata.write_function(MemoryStore(), 42)  # type: ignore[arg-type]


def test_function_whose_module_is_missing_is_corrupt_task() -> None:
    store = MemoryStore()
    store.put(FN_KEY, b"cmissing_module_for_kubemap\nf\n.")
    with pytest.raises(CorruptTaskError, match="install it in the worker image"):
        taskdata.read_function(store)
    with pytest.raises(CorruptTaskError, match=r"no fn\.pkl"):
        taskdata.read_function(MemoryStore())


@pytest.mark.parametrize(
    "values",
    [{}, {0: None}, {3: "a", 4: [1, 2], 9: {"k": b"v"}}, {i: i for i in range(0, 1000, 3)}],
)
def test_result_encoding_round_trip(values: dict[int, Any]) -> None:
    blob = taskdata.encode_results(values)
    ranges, decoded = taskdata.decode_results(blob)
    assert ranges == IndexRanges.of(values)
    assert dict(zip(ranges, decoded, strict=True)) == values


@pytest.mark.parametrize(
    ("blob", "complaint"),
    [
        (b"KM", "truncated"),
        (b"XXXX\x00\x00\x00\x00", "not a kubemap result"),
        (b"KMR1\xff\x00\x00\x00ab", "truncated"),
    ],
)
def test_bad_result_objects(blob: bytes, complaint: str) -> None:
    with pytest.raises(CorruptTaskError, match=complaint):
        taskdata.decode_results(blob)


def test_unpicklable_result_names_its_index() -> None:
    with pytest.raises(SerializationError) as caught:
        taskdata.encode_results({1: 1, 2: threading.Lock(), 3: 3})
    assert caught.value.index == 2


def test_results_headers_are_read_without_values() -> None:
    store = MemoryStore()
    many = {i: "x" * 100 for i in range(0, 40_000, 2)}  # a long ranges header (> 64 KiB)
    assert taskdata.write_results(store, 0, 40_000, many)
    assert taskdata.succeeded_indexes(store) == IndexRanges.of(many)
    with pytest.raises(ValueError, match="outside the slice"):
        taskdata.write_results(store, 0, 5, {7: 1})


def test_iter_results_yields_each_index_once() -> None:
    store = MemoryStore()
    taskdata.write_results(store, 0, 3, {0: "a", 2: "c"})
    taskdata.write_results(store, 1, 3, {1: "b", 2: "C", 3: "d"})
    store.put("results/nested/ignored", b"junk")
    assert list(taskdata.iter_results(store)) == [(0, "a"), (2, "c"), (1, "b"), (3, "d")]
    assert str(taskdata.succeeded_indexes(store)) == "0-3"


def test_iter_results_reads_100k_items_once_each() -> None:
    # Its speed is measured in bench/local_map.py, not asserted here.
    store = MemoryStore()
    for start in range(0, 100_000, 1000):
        taskdata.write_results(store, start, 1000, {i: 2 * i for i in range(start, start + 1000)})
    seen = [i for i, _ in taskdata.iter_results(store)]
    assert seen == list(range(100_000))
    assert sum(v for _, v in taskdata.iter_results(store)) == 2 * sum(range(100_000))


@pytest.mark.parametrize(
    ("keys", "start", "count", "found"),
    [
        ([(0, 10)], 0, 10, [(0, 10)]),
        ([(0, 10), (10, 10)], 10, 10, [(10, 10)]),
        ([(95, 10), (100, 10), (105, 1), (110, 10)], 100, 10, [(100, 10), (105, 1)]),
        ([(999, 1), (1000, 1), (1999, 1)], 1000, 1000, [(1000, 1), (1999, 1)]),
    ],
)
def test_slice_result_keys_lists_narrowly(
    keys: list[tuple[int, int]], start: int, count: int, found: list[tuple[int, int]]
) -> None:
    store = MemoryStore()
    for s, c in keys:
        store.put(result_key(s, c), taskdata.encode_results({s: 1}))
    assert taskdata.slice_result_keys(store, start, count) == [result_key(s, c) for s, c in found]


def test_errors_and_meta() -> None:
    store = MemoryStore()
    taskdata.write_error(
        store,
        12,
        {"type": "KeyError", "message": "'k'", "traceback": "T", "attempt": 2, "attempts": 3},
    )
    store.put("errors/garbage", b"{")
    errors = taskdata.read_errors(store)
    assert list(errors) == [12] and errors[12].attempts == 3 and errors[12].type == "KeyError"
    with pytest.raises(CorruptTaskError, match=r"task\.json"):
        taskdata.read_meta(store)
    meta = taskdata.TaskMeta.new(7, "m.f")
    assert meta.created.endswith("+00:00") and meta.version
    taskdata.write_meta(store, meta)
    assert taskdata.read_meta(store) == meta and taskdata.read_total(store) == 7
    store.put(META_KEY, b'{"total": -1}')
    with pytest.raises(CorruptTaskError, match="not a valid task description"):
        taskdata.read_meta(store)


def test_total_falls_back_to_the_index() -> None:
    store = MemoryStore()
    taskdata.write_inputs(store, range(5))
    assert taskdata.read_total(store) == 5
    with pytest.raises(CorruptTaskError, match="neither"):
        taskdata.read_total(MemoryStore())
