"""kubemap.files against real stores: a local directory and SeaweedFS S3.

Listing is counted, not timed: S3 LIST requests are counted through botocore's event hooks,
so "lazy, page by page" is something a test can see fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubemap
import pytest
from kubemap.stores import ObjectInfo, open_store
from kubemap.stores.s3 import s3_client

pytestmark = pytest.mark.timeout(120)


def byte_count(f: kubemap.File) -> tuple[str, int]:
    with f.open() as stream:
        head = stream.read(2)
        rest = stream.read()
    assert f.local_path().read_bytes() == f.read() == head + rest
    return f.name, len(head + rest)


def make_tree(root: Path) -> None:
    for rel in ("a.jpg", "b.txt", "x/c.jpg", "x/y/d.jpg", "x.jpg", "x-y/e.jpg"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode() * 3)


def test_file_store_lists_in_s3_key_order_lazily(tmp_path: Path) -> None:
    make_tree(tmp_path)
    store = open_store(str(tmp_path))
    keys = [o.key for o in store.iter_objects()]
    assert keys == sorted(keys) == sorted(store.list())
    assert [o.key for o in store.iter_objects("x/")] == ["x/c.jpg", "x/y/d.jpg"]
    assert [o.key for o in store.iter_objects(start_after="x.jpg")] == [
        "x/c.jpg",
        "x/y/d.jpg",
    ]
    first = next(store.iter_objects())
    assert first == ObjectInfo("a.jpg", 15, first.tag) and first.tag


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_iter_objects_contract(kind: str, tmp_path: Path) -> None:
    store = open_store(str(tmp_path) if kind == "file" else f"memory://files-{tmp_path.name}")
    for key in ("b/2", "a", "b/1", "a.b", "c"):
        store.put(key, key.encode() * 2)
    assert [(o.key, o.size) for o in store.iter_objects()] == [
        ("a", 2),
        ("a.b", 6),
        ("b/1", 6),
        ("b/2", 6),
        ("c", 2),
    ]
    assert [o.key for o in store.iter_objects("b/", start_after="b/1")] == ["b/2"]
    assert [o.key for o in store.iter_objects("a")] == ["a", "a.b"]


def test_local_glob_maps_each_file(tmp_path: Path) -> None:
    make_tree(tmp_path)
    found = list(kubemap.files(f"{tmp_path}/**/*.jpg"))
    assert [f.key.removeprefix(str(tmp_path).lstrip("/") + "/") for f in found] == [
        "a.jpg",
        "x-y/e.jpg",
        "x.jpg",
        "x/c.jpg",
        "x/y/d.jpg",
    ]
    assert found[0].url == (tmp_path / "a.jpg").as_uri()
    assert found[0].local_path() == tmp_path / "a.jpg"
    results = kubemap.map(byte_count, kubemap.files(f"file://{tmp_path}/x/*.jpg"), parallelism=2)
    assert results == [("c.jpg", 21)]
    assert [f.name for f in kubemap.files(str(tmp_path / "x"))] == ["c.jpg", "d.jpg"]


def test_missing_local_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(kubemap.ConfigError, match="does not exist"):
        list(kubemap.files(f"{tmp_path}/nope/*.jpg"))


@pytest.fixture
def list_calls(s3_store_url: str) -> Iterator[list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(params)

    client = s3_client()
    client.meta.events.register("provide-client-params.s3.ListObjectsV2", record)
    yield calls
    client.meta.events.unregister("provide-client-params.s3.ListObjectsV2", record)


def test_s3_listing_is_paged_and_lazy(s3_store_url: str, list_calls: list[dict[str, Any]]) -> None:
    store = open_store(s3_store_url)
    keys = [f"img/{i:05d}.jpg" for i in range(1001)] + ["img/notes.txt", "other/z.jpg"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, k.encode()), keys))
    prefix = s3_store_url.removeprefix("s3://").split("/", 1)[1]
    listing = iter(kubemap.files(f"{s3_store_url}/img/*.jpg"))
    first = next(listing)
    assert len(list_calls) == 1  # one page, not the whole listing
    assert list_calls[0]["Prefix"] == f"{prefix}/img/"
    rest = list(listing)
    assert len(list_calls) == 2
    assert len(rest) + 1 == 1001
    assert (first.key, first.size, first.read()) == (
        f"{prefix}/img/00000.jpg",
        13,
        b"img/00000.jpg",
    )
    assert [o.key for o in store.iter_objects("img/", start_after="img/00999.jpg")] == [
        "img/01000.jpg",
        "img/notes.txt",
    ]


def test_map_over_s3_files(s3_store_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("KUBEMAP_FILES_CACHE", str(tmp_path / "downloads"))
    store = open_store(s3_store_url)
    for name in ("p.jpg", "q.jpg", "r.png"):
        store.put(f"in/{name}", name.encode() * 1000)
    results = kubemap.map(byte_count, kubemap.files(f"{s3_store_url}/in/*.jpg"), store=s3_store_url)
    assert results == [("p.jpg", 5000), ("q.jpg", 5000)]
    assert len(list((tmp_path / "downloads").rglob("*.jpg"))) == 2  # downloaded once each


def test_a_missing_local_root_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """files("nosuchdir") listed nothing, silently, while files("nosuchdir/*.txt") raised."""
    monkeypatch.chdir(tmp_path)
    for pattern in ("nosuchdir", "nosuchdir/", f"file://{tmp_path}/nosuchdir", "nosuchdir/*.txt"):
        with pytest.raises(kubemap.ConfigError, match="does not exist") as raised:
            list(kubemap.files(pattern))
        assert str(tmp_path / "nosuchdir") in str(raised.value), pattern
    store = tmp_path / "store"
    with pytest.raises(kubemap.ConfigError, match=str(tmp_path / "nosuchdir")):
        kubemap.map(byte_count, kubemap.files("nosuchdir"), store=str(store))
    assert not [p for p in store.glob("*") if p.is_dir()]  # no half-written task left
    (tmp_path / "empty").mkdir()
    assert list(kubemap.files("empty")) == list(kubemap.files("empty/*.txt")) == []
    (tmp_path / "one.txt").write_text("1")
    assert [f.name for f in kubemap.files("one.txt")] == ["one.txt"]


def test_a_missing_s3_prefix_is_an_error_naming_it(s3_store_url: str) -> None:
    store = open_store(s3_store_url)
    store.put("in/a.jpg", b"a")
    with pytest.raises(kubemap.ConfigError, match=f"no object at or below {s3_store_url}/nosuch"):
        list(kubemap.files(f"{s3_store_url}/nosuch"))
    with pytest.raises(kubemap.ConfigError, match=f"no object below {s3_store_url}/nosuch/"):
        list(kubemap.files(f"{s3_store_url}/nosuch/*.jpg"))
    assert list(kubemap.files(f"{s3_store_url}/in/*.png")) == []  # the prefix exists
    assert [f.name for f in kubemap.files(f"{s3_store_url}/in")] == ["a.jpg"]
