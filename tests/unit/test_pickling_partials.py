"""A function wrapped in functools.partial travels like the function itself: by value
when its module is the user's own (a worker, a pod, has no copy of it). Executor runs
every call as a partial, so on a cluster its calls of a user's module failed to load."""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
from pathlib import Path

from kubemap.task.pickling import dumps_function


def test_a_partial_of_a_user_module_function_loads_where_the_module_is_missing(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "mytasks_partial.py").write_text(
        "class Scale:\n    def __init__(self, k):\n        self.k = k\n\n"
        "def f(scale, x):\n    return scale.k * x\n"
    )
    sys.path.insert(0, str(source))
    try:
        module = importlib.import_module("mytasks_partial")
        blobs = {
            "partial": dumps_function(functools.partial(module.f, module.Scale(3))),
            "nested": dumps_function(
                functools.partial(functools.partial(module.f), module.Scale(3))
            ),
        }
    finally:
        sys.path.remove(str(source))
        sys.modules.pop("mytasks_partial", None)
    loaded = []
    for name, blob in blobs.items():
        (tmp_path / f"{name}.pkl").write_bytes(blob)
        code = (
            f"import pickle; print(pickle.load(open({str(tmp_path / f'{name}.pkl')!r}, 'rb'))(7))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        loaded.append(done.stdout.strip())
    assert loaded == ["21", "21"]
