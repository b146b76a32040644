"""How kubemap pickles functions, inputs and results, and turns failures into clear errors.

Data goes through the fast stdlib pickler first and falls back to cloudpickle (whose output
is plain pickle protocol 5) only when that fails or when the pickle refers to a module the
worker cannot import (``__main__``, a script, a test module): 100,000 tiny inputs stay fast.
"""

from __future__ import annotations

import functools
import importlib.metadata
import pickle
import sys
from collections.abc import Callable
from typing import Any, cast

import cloudpickle

from kubemap.errors import CorruptTaskError, SerializationError

PROTOCOL = 5
# Modules the worker always has: never pickle these by value.
_ALWAYS_IMPORTABLE = frozenset({"builtins", "kubemap", "kubemap_operator", "cloudpickle"})


def describe(obj: Any) -> str:
    kind = type(obj)
    module = kind.__module__
    name = (
        kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    )
    return f"type {name}"


def by_value_markers() -> tuple[bytes, ...]:
    """Module names that, found in a stdlib pickle, mean it must be redone with cloudpickle:
    ``__main__`` and the modules registered to travel by value."""
    return tuple(
        name.encode() for name in ("__main__", *cloudpickle.list_registry_pickle_by_value())
    )


def slow_dumps(obj: Any) -> bytes:
    return cast(bytes, cloudpickle.dumps(obj, PROTOCOL))


def item_encoder() -> Callable[[Any], bytes]:
    """A pickler for many small objects; pickles that name a module the worker may lack
    (by-value modules, ``__main__``) are redone with cloudpickle, which embeds the code."""
    markers = by_value_markers()
    fast = pickle.dumps

    def encode(obj: Any) -> bytes:
        try:
            data = fast(obj, PROTOCOL)
        except Exception:
            return slow_dumps(obj)
        for marker in markers:
            if marker in data:
                return slow_dumps(obj)
        return data

    return encode


def dumps(obj: Any) -> bytes:
    return item_encoder()(obj)


@functools.cache
def _installed_top_levels() -> frozenset[str]:
    return frozenset(importlib.metadata.packages_distributions())


def needs_pickle_by_value(module_name: str | None) -> bool:
    """True for a module the worker cannot be expected to import: not from the standard
    library, not from an installed distribution (a script, a test module, a notebook)."""
    if not module_name or module_name == "__main__":  # cloudpickle embeds __main__ itself
        return False
    top = module_name.split(".", 1)[0]
    if top in _ALWAYS_IMPORTABLE or top in sys.stdlib_module_names:
        return False
    return top not in _installed_top_levels() and top in sys.modules


def register_module_by_value(module_name: str | None) -> None:
    """Make cloudpickle embed the code of module_name's top-level package (kept registered
    so that inputs of its types, pickled next, are embedded too)."""
    if not needs_pickle_by_value(module_name):
        return
    assert module_name is not None
    top = module_name.split(".", 1)[0]
    if top not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(sys.modules[top])


def function_name(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    module = getattr(fn, "__module__", None)
    if name is None:
        return repr(fn)[:200]
    return f"{module}.{name}" if module else str(name)


def dumps_function(fn: Callable[..., Any]) -> bytes:
    if not callable(fn):
        raise SerializationError(
            f"{describe(fn)} is not callable: pass a function, e.g. kubemap.map(f, inputs)",
            index=None,
        )
    target: Any = fn
    while isinstance(target, functools.partial):  # a partial's module is "functools"
        target = target.func
    module = getattr(target, "__module__", None) or type(target).__module__
    register_module_by_value(module)
    try:
        return cast(bytes, cloudpickle.dumps(fn, PROTOCOL))
    except Exception as exc:
        raise SerializationError(
            f"function {function_name(fn)} cannot be pickled: {exc}; it probably uses an "
            "object that cannot travel to another process (a lock, socket, open file, "
            "database connection): create that object inside the function instead",
            index=None,
        ) from exc


def loads(data: bytes | memoryview, *, what: str) -> Any:
    """Unpickle, mapping failures to CorruptTaskError that says what to fix."""
    try:
        return pickle.loads(data)
    except (ImportError, AttributeError) as exc:
        raise CorruptTaskError(
            f"cannot load {what}: {type(exc).__name__}: {exc}; the module it needs is not "
            "installed here: install it in the worker image (or use the same Python and "
            "library versions as the submitting machine)",
            code=type(exc).__name__,  # the worker's termination message names it
        ) from exc
    except Exception as exc:
        raise CorruptTaskError(
            f"cannot load {what}: {type(exc).__name__}: {exc}; the data is corrupt or was "
            "written by another Python or kubemap version: submit the task again"
        ) from exc
