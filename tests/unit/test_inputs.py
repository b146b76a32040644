"""How `--format auto` reads an input file: JSON Lines of any JSON values (arrays, objects,
scalars) item by item, a single JSON array document (one line or pretty-printed) as its
elements, anything else as text lines."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from kubemap.cli.inputs import parse_inputs
from kubemap.errors import ConfigError

ROWS: list[Any] = [[1, "a"], [2, "b"], [3, "c"]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # JSON Lines whose first line is an array: one item per line, not one array
        ("".join(json.dumps(row) + "\n" for row in ROWS), ROWS),
        ("[1]\n[2]", [[1], [2]]),
        ("\n\n[1, 2]\n\n[3]\n\n", [[1, 2], [3]]),
        ("[]\n[]\n", [[], []]),
        ("[1]\r\n[2]\r\n", [[1], [2]]),
        ('[1]\n{"a": 2}\n3\n"x"\nnull\n', [[1], {"a": 2}, 3, "x", None]),
        # JSON Lines of objects and scalars
        ('{"a": 1}\n{"a": 2}\n', [{"a": 1}, {"a": 2}]),
        ('"x"\n[1, 2]\ntrue\n', ["x", [1, 2], True]),
        ("1.5\n2\n", [1.5, 2]),
        # a single JSON array document: its elements
        ("[1, 2, 3]", [1, 2, 3]),
        ("[1, 2, 3]\n\n  \n", [1, 2, 3]),
        (json.dumps(ROWS), ROWS),
        (json.dumps(ROWS, indent=2), ROWS),
        ("[\n[1, 2],\n[3]\n]\n", [[1, 2], [3]]),
        ("[[1, 2],\n [3]]\n", [[1, 2], [3]]),
        ('\n[\n  {"a": 1}\n]', [{"a": 1}]),
        # text lines
        ("hello\nworld\n", ["hello", "world"]),
    ],
)
def test_auto_reads_json_lines_and_json_arrays(text: str, expected: list[Any]) -> None:
    assert list(parse_inputs(io.StringIO(text), "auto")) == expected


@pytest.mark.parametrize(
    ("text", "must_mention"),
    [
        ("[1]\n[2\n", ["line 2", "--format lines"]),
        ("\n[1]\n\n[2]\nfoo\n", ["line 5", "foo"]),
        ("[1, 2\n", ["not a valid JSON array"]),
        ("[\n1,\n2\n]\n[3]\n", ["not a valid JSON array"]),
    ],
)
def test_auto_errors_name_the_line(text: str, must_mention: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        list(parse_inputs(io.StringIO(text), "auto", source="in.jsonl"))
    for part in must_mention:
        assert part in str(info.value)


def test_auto_streams_json_lines_of_arrays() -> None:
    class OneShot(io.StringIO):
        def read(self, *args: Any) -> str:  # pragma: no cover - must not be called
            raise AssertionError("JSON Lines must be read line by line")

    items = parse_inputs(OneShot("[1]\n[2]\n" * 1000), "auto")
    assert next(items) == [1] and next(items) == [2]
    assert sum(1 for _ in items) == 1998
