"""What the per-item cache keys on: the function's own code and bound values, not where it
sits in a file."""

from __future__ import annotations

import functools

from kubemap.task.cacheentries import function_identity


def make(offset: int):  # type: ignore[no-untyped-def]
    def add(x: int) -> int:
        return x + offset

    return add


def plus_one(x: int) -> int:
    return x + 1


def plus_two(x: int) -> int:
    return x + 2


def test_same_code_same_id_even_elsewhere() -> None:
    ns: dict[str, object] = {}
    exec("\n\n\ndef plus_one(x):\n    return x + 1\n", ns)  # other lines, other file
    ns["plus_one"].__qualname__ = plus_one.__qualname__  # type: ignore[attr-defined]
    ns["plus_one"].__module__ = plus_one.__module__  # type: ignore[attr-defined]
    assert function_identity(ns["plus_one"]) == function_identity(plus_one)  # type: ignore[arg-type]


def test_code_version_closure_and_partial_args_change_it() -> None:
    base = function_identity(plus_one)
    assert function_identity(plus_two) != base
    assert function_identity(plus_one, "v2") != base
    assert function_identity(plus_one, "v2") == function_identity(plus_one, "v2")
    assert function_identity(make(1)) != function_identity(make(2))
    assert function_identity(make(1)) == function_identity(make(1))
    p = functools.partial(plus_one)
    assert function_identity(functools.partial(max, 1)) != function_identity(
        functools.partial(max, 2)
    )
    assert function_identity(p) != function_identity(functools.partial(plus_two))


def test_lambdas_differ_by_body() -> None:
    assert function_identity(lambda x: x * 2) != function_identity(lambda x: x * 3)
