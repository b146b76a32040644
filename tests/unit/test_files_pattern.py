"""kubemap.files: how patterns become a listing prefix and a matcher (no I/O)."""

from __future__ import annotations

import pickle

import kubemap
import pytest
from kubemap.task.inputfiles import File, files, glob_regex


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("images/**/*.jpg", "images/a.jpg", True),
        ("images/**/*.jpg", "images/x/y/a.jpg", True),
        ("images/**/*.jpg", "images/x/a.png", False),
        ("images/*.jpg", "images/x/a.jpg", False),
        ("images/?.jpg", "images/a.jpg", True),
        ("images/?.jpg", "images/ab.jpg", False),
        ("images/[ab].jpg", "images/b.jpg", True),
        ("images/[!ab].jpg", "images/b.jpg", False),
        ("images/[a-c].jpg", "images/c.jpg", True),
        ("data/**", "data/x/y", True),
        ("a+b/*.txt", "a+b/x.txt", True),
    ],
)
def test_glob_regex(pattern: str, key: str, matches: bool) -> None:
    assert (glob_regex(pattern).fullmatch(key) is not None) is matches


def test_s3_pattern_lists_from_its_literal_prefix() -> None:
    found = files("s3://bucket/images/img_*/**/*.jpg")
    assert (found.root, found.prefix) == ("s3://bucket", "images/img_")
    assert repr(found) == "kubemap.files('s3://bucket/images/img_*/**/*.jpg')"


def test_local_patterns_are_absolute_keys_of_the_filesystem_root() -> None:
    assert files("/data/scans/*.tif").prefix == "data/scans/"
    assert files("file:///data/scans/*.tif").prefix == "data/scans/"
    assert files("file:///data/scans/").root == "file:///"
    assert files("/data/one.csv").matcher is None


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("", "needs a pattern"),
        ("s3://ab/x/*", "bucket name"),
        ("gs://bucket/x", "unsupported pattern"),
        ("file://host/x", "three slashes"),
    ],
)
def test_bad_patterns_say_what_to_do(pattern: str, says: str) -> None:
    with pytest.raises(kubemap.ConfigError, match=says):
        files(pattern)


def test_file_pickles_small_and_names_itself() -> None:
    f = File(url="s3://b/x/y.jpg", key="x/y.jpg", size=3, tag="e", root="s3://b")
    assert pickle.loads(pickle.dumps(f)) == f
    assert f.name == "y.jpg"
    assert len(pickle.dumps(f)) < 200
