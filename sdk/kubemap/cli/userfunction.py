"""Loading the user's function for `kubemap run MODULE:FUNCTION`: a dotted module (from the
cwd) or a .py path, with a one-line error naming the file and line when the user's module
fails to import (the traceback only on --verbose)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubemap.errors import ConfigError, KubemapError


class UserCodeError(KubemapError):
    """The user's module raised while being imported: one line, the traceback on --verbose."""


def load_function(target: str, *, verbose: bool = False) -> Callable[..., Any]:
    """MODULE:FUNCTION -> the function; MODULE is dotted (from the cwd) or a .py path."""
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise ConfigError(
            f"expected MODULE:FUNCTION, got {target!r}: e.g. tasks:square or ./tasks.py:square"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
            module = _import_file(Path(module_part))
        else:
            try:
                module = importlib.import_module(module_part)
            except ModuleNotFoundError as exc:
                if exc.name and module_part.startswith(exc.name):
                    raise ConfigError(
                        f"no module named {module_part!r} (looked in {cwd} and the installed "
                        "packages): run from the directory that holds it, or give a .py path"
                    ) from None
                raise
    except ConfigError:
        raise
    except Exception as exc:  # the user's module itself failed: say where, in one line
        if verbose:
            traceback.print_exc()
        raise UserCodeError(_import_failure(module_part, exc, verbose=verbose)) from None
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigError(f"{module_part} has no {attr!r}: check the function name") from None
    if not callable(value):
        raise ConfigError(f"{target} is a {type(value).__name__}, not a function")
    return value  # type: ignore[no-any-return]


def _import_failure(module_part: str, exc: BaseException, *, verbose: bool = False) -> str:
    """`cannot import tasks.py: ModuleNotFoundError: No module named 'x' (tasks.py, line 1)`."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if "importlib" not in f.filename and "kubemap" not in f.filename]
    if mine:
        where = f" ({os.path.relpath(mine[-1].filename)}, line {mine[-1].lineno})"
    elif isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({os.path.relpath(exc.filename)}, line {exc.lineno})"
    hint = (
        f"; install {exc.name!r} or fix the import"
        if isinstance(exc, ModuleNotFoundError) and exc.name
        else ""
    )
    message = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, SyntaxError) and exc.msg:
        message = exc.msg  # str() appends "(file, line N)", which `where` says already
    more = "" if verbose else " (--verbose for the traceback)"  # printed above on --verbose
    return f"cannot import {module_part}: {type(exc).__name__}: {message}{where}{hint}{more}"


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # so the file's own sibling imports work
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}: is it a Python file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
