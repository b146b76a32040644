"""The contract with users, frozen: `kubemap.__all__`, every public signature, the CLI's
commands and options, and the CRDs' bytes.

A change to any of them fails here with the difference. When the change is meant (a new
option, a new command), refresh the snapshot and commit it with the change that explains why:

    .venv/bin/python tests/unit/test_public_api.py --update

A redesign that moves modules must leave this file's snapshot untouched.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import click
import kubemap

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SNAPSHOT = HERE / "public_api.json"


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):  # builtins without a signature
        return "(?)"


def _class_surface(cls: type) -> dict[str, str]:
    """The public methods and properties a user reaches on instances of `cls`, as defined
    by kubemap (inherited stdlib members such as Exception.with_traceback are not ours)."""
    surface: dict[str, str] = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("kubemap"):
            continue
        for name, member in vars(klass).items():
            if (name.startswith("_") and name != "__init__") or name in surface:
                continue
            if isinstance(member, property):
                surface[name] = "property"
            elif isinstance(member, (classmethod, staticmethod)):
                surface[name] = _signature(member.__func__)
            elif inspect.isfunction(member):
                surface[name] = _signature(member)
    return dict(sorted(surface.items()))


def _python_api() -> dict[str, Any]:
    api: dict[str, Any] = {}
    for name in sorted(kubemap.__all__):
        obj = getattr(kubemap, name)
        if inspect.isclass(obj):
            bases = [b.__name__ for b in obj.__mro__[1:] if b is not object]
            api[name] = {"class": bases, "members": _class_surface(obj)}
        elif callable(obj):
            api[name] = {"function": _signature(obj)}
        else:
            api[name] = {"value": type(obj).__name__}
    return api


def _cli(command: click.Command, prefix: str = "kubemap") -> dict[str, Any]:
    entry: dict[str, Any] = {
        "params": sorted(
            f"{'/'.join(p.opts + p.secondary_opts)}:{p.param_type_name}"
            + (":multiple" if getattr(p, "multiple", False) else "")
            for p in command.params
        )
    }
    if isinstance(command, click.Group):
        entry["commands"] = {
            name: _cli(sub, f"{prefix} {name}")
            for name, sub in sorted(command.commands.items())
            if not sub.hidden
        }
    return entry


def _crds() -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((ROOT / "crds").glob("*.yaml"))
    }


def current() -> dict[str, Any]:
    from kubemap.cli.main import main

    return {"python": _python_api(), "cli": _cli(main), "crds": _crds()}


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def test_the_public_surface_matches_its_snapshot() -> None:
    want = SNAPSHOT.read_text()
    got = _dump(current())
    if got != want:
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(True), got.splitlines(True), "snapshot", "now", n=2
            )
        )
        raise AssertionError(
            "kubemap's public surface changed (Python API, CLI or CRDs). If that is meant, "
            "run `.venv/bin/python tests/unit/test_public_api.py --update` and commit the "
            f"snapshot with the change that explains it:\n{diff}"
        )


def test_the_snapshot_sees_a_changed_signature() -> None:
    """The snapshot is not blind: a changed keyword of map() shows in what it records."""
    before = _python_api()["map"]["function"]

    def changed(fn: Any, inputs: Any, /, *, another: int = 1) -> None: ...

    assert _signature(changed) != before
    assert "inputs" in before


def test_every_public_name_is_listed_by_dir() -> None:
    assert set(kubemap.__all__) <= set(dir(kubemap)), set(kubemap.__all__) - set(dir(kubemap))


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: tests/unit/test_public_api.py --update")
    SNAPSHOT.write_text(_dump(current()))
    print(f"wrote {SNAPSHOT.relative_to(ROOT)}")
