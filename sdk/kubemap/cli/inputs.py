"""Reading the CLI's input files: JSON lines, a JSON array, or one item per text line.

Pure parsing over a text stream, streamed where the format allows it (JSON lines and text
lines are read one line at a time, so a large file never sits in memory twice).

Text lines keep every line, blank ones too (as ""): result i is the result of line i+1, so
a user can paste results next to their input. JSON lines skip blank lines: there the items
are the JSON values, and a blank line holds none.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Any, Literal, TextIO

from kubemap.errors import ConfigError

Format = Literal["auto", "jsonl", "json", "lines"]
FORMATS: tuple[str, ...] = ("auto", "jsonl", "json", "lines")


def parse_inputs(stream: TextIO, fmt: Format = "auto", *, source: str = "input") -> Iterator[Any]:
    """Items from `stream`. auto: JSON lines if the first non-blank line is a JSON value
    and more lines follow, a JSON array if the text is one (on one line or many), else one
    string per line. Text lines keep blank lines as "" items (results line up with input
    lines); JSON lines skip them."""
    if fmt == "json":
        yield from _json_array(stream.read(), source)
        return
    if fmt == "lines":
        yield from _text_lines(stream)
        return
    if fmt == "jsonl":
        yield from _json_lines(stream, source, first=None)
        return
    if fmt != "auto":
        raise ConfigError(f"unknown input format {fmt!r}: use one of {', '.join(FORMATS)}")
    first, number = "", 0
    for line in stream:
        number += 1
        if line.strip():
            first = line
            break
    if not first:
        return  # nothing but blank lines: no format to detect, no items

    try:
        json.loads(first)
    except ValueError:
        if first.lstrip().startswith("["):  # an array spread over lines (pretty-printed)
            yield from _json_array(first + stream.read(), source)
            return
        yield from [""] * (number - 1)  # the blank lines before the first: items too
        yield first.rstrip("\r\n")
        yield from _text_lines(stream)
        return
    lines: Iterable[str] = stream
    if first.lstrip().startswith("["):
        # An array whole on the first line is the one JSON document if nothing follows it,
        # else the first of JSON Lines (a document cannot go on after its value ends).
        ahead: list[str] = []
        for line in stream:
            ahead.append(line)
            if line.strip():
                break
        else:
            yield from _json_array(first, source)
            return
        lines = itertools.chain(ahead, stream)  # the blank lines too: they keep the count
    yield from _json_lines(lines, source, first=first, first_number=number)


def _json_array(text: str, source: str) -> Iterator[Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"{source} is not a valid JSON array: {exc}; use --format jsonl or lines if it "
            "holds one item per line"
        ) from None
    if not isinstance(value, list):
        raise ConfigError(f"{source} holds a JSON {type(value).__name__}, not an array of inputs")
    yield from value


def _json_lines(
    stream: Iterable[str], source: str, first: str | None, first_number: int = 0
) -> Iterator[Any]:
    number = first_number
    if first is not None:
        yield json.loads(first)
    for line in stream:
        number += 1
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except ValueError as exc:
            raise ConfigError(
                f"line {number} of {source} is not valid JSON ({exc}): {line.strip()[:80]!r}; "
                "use --format lines to read every line as text"
            ) from None


def _text_lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\r\n")
