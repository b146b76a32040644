"""`kubemap run --format auto` over input files as users write them, end to end on the local
backend (a subprocess, the file store): JSON Lines of arrays run one call per line, a JSON
array document one call per element."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

ROWS: list[Any] = [[1, "a"], [2, "bb"], [3, "ccc"]]


def _run_over(tmp_path: Path, name: str, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rowtasks.py").write_text(
        "def describe(row):\n    return {'type': type(row).__name__, 'len': len(row)}\n"
    )
    (tmp_path / name).write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "kubemap", "run", "rowtasks:describe", "--inputs", name],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "KUBEMAP_STORE": str(tmp_path / "store")},
        timeout=110,
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("rows.jsonl", "".join(json.dumps(row) + "\n" for row in ROWS)),
        ("rows.json", json.dumps(ROWS, indent=2)),
        ("rows-compact.json", json.dumps(ROWS)),
    ],
)
def test_auto_runs_one_call_per_row(tmp_path: Path, name: str, text: str) -> None:
    result = _run_over(tmp_path, name, text)
    assert result.returncode == 0, result.stderr
    got = [json.loads(line) for line in result.stdout.splitlines()]
    assert got == [{"type": "list", "len": len(row)} for row in ROWS]
