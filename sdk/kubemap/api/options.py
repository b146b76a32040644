"""Turning the keyword options of map/submit into a validated RunOptions.

Pure logic, no I/O: a bad option becomes a ConfigError that names the option, the value
given and what is allowed, instead of pydantic's generic report.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import ValidationError

from kubemap.contract import MAX_TASK_NAME
from kubemap.errors import ConfigError
from kubemap.resources.maptask import RunOptions


def validate_options(options: dict[str, Any]) -> RunOptions:
    """RunOptions from keyword options; ConfigError naming the option when one is wrong."""
    known = set(RunOptions.model_fields)
    unknown = [key for key in options if key not in known]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown option {key!r}: {hint}options are {', '.join(sorted(known))}")
    try:
        return RunOptions(**options)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, options)) from None


def _describe(exc: ValidationError, options: dict[str, Any]) -> str:
    lines = []
    for error in exc.errors():
        if not error["loc"] and error["type"] == "value_error":
            # a rule across options (RunOptions' model validator): its message says it all
            lines.append(str((error.get("ctx") or {}).get("error", error["msg"])))
            continue
        field = str(error["loc"][0]) if error["loc"] else "options"
        given = options.get(field, "<missing>")
        lines.append(f"invalid option {field}={given!r}: {_allowed(field, error)}")
    return "; ".join(lines)


def _allowed(field: str, error: Any) -> str:
    ctx = error.get("ctx") or {}
    if error["type"] == "literal_error":
        return f"use one of {ctx.get('expected', '')}"
    if field == "name":
        return (
            f"a task name is at most {MAX_TASK_NAME} characters of lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (DNS-1123)"
        )
    bounds = RunOptions.model_fields[field].metadata if field in RunOptions.model_fields else []
    limits = []
    for bound in bounds:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(bound, attr, None)
            if value is not None:
                limits.append(f"{word} {value}")
    message = str(error["msg"])
    return message + (f" (allowed: {' and '.join(limits)})" if limits else "")
