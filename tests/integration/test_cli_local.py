"""`python -m kubemap run` end to end, in a subprocess, on the local backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SQUARE = ROOT / "examples" / "square.py"


def kubemap_run(
    *args: str, stdin: str = "", cwd: Path | None = None, store: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBEMAP_STORE": str(store)}
    return subprocess.run(
        [sys.executable, "-m", "kubemap", "run", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def test_run_file_function_over_stdin(tmp_path: Path) -> None:
    result = kubemap_run(f"{SQUARE}:square", "--inputs", "-", stdin="1\n2\n3\n", store=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [1, 4, 9]
    assert result.stderr == ""
    assert list(tmp_path.rglob("*.pkl")) == []  # the default store is cleaned after success


def test_run_dotted_module_from_cwd_with_output_file(tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text("def shout(s):\n    return s.upper() + '!'\n")
    (tmp_path / "words.txt").write_text("hello\nbig world\n")
    out = tmp_path / "out.jsonl"
    result = kubemap_run(
        "mytasks:shout",
        "--inputs",
        "words.txt",
        "--output",
        str(out),
        "--parallelism",
        "2",
        "--retries",
        "1",
        cwd=tmp_path,
        store=tmp_path / "store",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert out.read_text().splitlines() == ['"HELLO!"', '"BIG WORLD!"']


def test_run_json_array_and_word_counts(tmp_path: Path) -> None:
    (tmp_path / "lines.json").write_text(json.dumps(["a b a", "c"]))
    result = kubemap_run(
        f"{SQUARE}:word_count", "--inputs", str(tmp_path / "lines.json"), store=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(x) for x in result.stdout.splitlines()] == [{"a": 2, "b": 1}, {"c": 1}]


def test_failures_print_tracebacks_and_null_results(tmp_path: Path) -> None:
    result = kubemap_run(
        f"{SQUARE}:inverse",
        "--inputs",
        "-",
        "--items-per-pod",
        "3",
        stdin="[1, 0, 4]",
        store=tmp_path,
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["1.0", "null", "0.25"]
    assert "1 of 3 inputs failed" in result.stderr
    assert "index 1: ZeroDivisionError" in result.stderr
    assert "return 1 / x" in result.stderr  # the remote traceback


def test_tolerated_failures_are_reported_with_exit_0(tmp_path: Path) -> None:
    result = kubemap_run(
        f"{SQUARE}:inverse",
        "--inputs",
        "-",
        "--min-success-ratio",
        "0.5",
        stdin="1\n0\n4\n",
        store=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["1.0", "null", "0.25"]
    assert (
        "1 of 3 inputs failed (tolerated" in result.stderr and "ZeroDivisionError" in result.stderr
    )


def test_errors_are_clean_messages(tmp_path: Path) -> None:
    result = kubemap_run("nosuchmod:f", "--inputs", "-", stdin="1\n", store=tmp_path)
    assert result.returncode == 2
    assert "no module named 'nosuchmod'" in result.stderr
    assert "Traceback" not in result.stderr
    result = kubemap_run(
        f"{SQUARE}:square", "--inputs", "-", "--format", "jsonl", stdin="1\nx\n", store=tmp_path
    )
    assert result.returncode == 2 and "line 2" in result.stderr and "Traceback" not in result.stderr


def test_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubemap", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "Usage: kubemap" in result.stdout and "run" in result.stdout


def test_kubemap_run_on_the_local_backend_never_imports_the_kubernetes_client(
    tmp_path: Path,
) -> None:
    inputs = tmp_path / "in.txt"
    inputs.write_text("1\n2\n3\n")
    code = (
        "import sys\n"
        "from kubemap.cli import main\n"
        "try:\n"
        f"    main(['run', {str(SQUARE) + ':square'!r}, '--inputs', {str(inputs)!r},"
        f" '--store', {str(tmp_path / 'store')!r}])\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'kopf'})\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY=\n" in done.stdout or done.stdout.rstrip().endswith("HEAVY=")
    assert done.stdout.splitlines()[:3] == ["1", "4", "9"]
