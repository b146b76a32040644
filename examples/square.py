"""Functions for `kubemap run`, e.g.

seq 1 10 | kubemap run examples/square.py:square --inputs -
kubemap run examples/square.py:word_count --inputs README.md --format lines
"""

from __future__ import annotations


def square(x: float) -> float:
    """The square of a number."""
    return x * x


def word_count(line: str) -> dict[str, int]:
    """How often each word occurs in a line of text."""
    counts: dict[str, int] = {}
    for word in line.lower().split():
        word = word.strip(".,;:!?\"'()[]")
        if word:
            counts[word] = counts.get(word, 0) + 1
    return counts


def inverse(x: float) -> float:
    """1/x: fails with ZeroDivisionError for 0, to show how failures are reported."""
    return 1 / x
