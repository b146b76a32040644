"""`python -m kubemap run` end to end, in a subprocess, on the local backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    # fail-fast (the default ratio, no retry): index 1's failure decides the task, so its
    # slice stops there and index 2 is not run
    assert result.stdout.splitlines() == ["1.0", "null", "null"]
    assert (
        "index 1 failed (ZeroDivisionError: division by zero); 1 succeeded, 1 failed, 1 not run"
        in result.stderr
    )
    assert "index 1: ZeroDivisionError" in result.stderr
    assert "return 1 / x" not in result.stderr and "--verbose" in result.stderr
    verbose = kubemap_run(
        f"{SQUARE}:inverse", "--inputs", "-", "--verbose", stdin="[1, 0, 4]", store=tmp_path
    )
    assert verbose.returncode == 1
    assert "return 1 / x" in verbose.stderr  # the remote traceback, on request


def test_a_stopped_run_names_what_never_ran_and_how_to_run_it(tmp_path: Path) -> None:
    # The first slice of 3 runs 0-1 and fails at index 2, which decides the task (the
    # default ratio 1, no retry); with one worker the second slice (3-5) never starts.
    result = kubemap_run(
        f"{SQUARE}:inverse",
        "--inputs",
        "-",
        "--items-per-pod",
        "3",
        "--parallelism",
        "1",
        stdin="[1, 2, 0, 3, 4, 5]",
        store=tmp_path,
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["1.0", "0.5", "null", "null", "null", "null"]
    assert "stopped after index 2 failed (ZeroDivisionError" in result.stderr
    assert "2 succeeded, 1 failed, 3 not run" in result.stderr
    assert "not run: 3 inputs; `kubemap retry " in result.stderr
    name = result.stderr.split("`kubemap retry ")[1].split("`")[0]
    # `kubemap results NAME` finds a local task in the local store, with no cluster around.
    env = {**os.environ, "KUBEMAP_STORE": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    shown = subprocess.run(
        [sys.executable, "-m", "kubemap", "results", name],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 1 and shown.stdout.splitlines() == result.stdout.splitlines()
    # The same account as the run's: the one MapTaskError summary, the same three counts.
    assert result.stderr.splitlines()[0].startswith(shown.stderr.splitlines()[0])
    assert f"task {name} stopped after index 2 failed" in shown.stderr
    assert "2 succeeded, 1 failed, 3 not run" in shown.stderr


def test_a_module_that_fails_to_import_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import os\nimport no_such_dependency_kubemap\n")
    result = kubemap_run("broken.py:f", "--inputs", "-", stdin="1\n", cwd=tmp_path, store=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: cannot import broken.py: ModuleNotFoundError: No module named "
        "'no_such_dependency_kubemap' (broken.py, line 2); install "
        "'no_such_dependency_kubemap' or fix the import (--verbose for the traceback)"
    ]
    verbose = kubemap_run(
        "broken.py:f", "--inputs", "-", "-v", stdin="1\n", cwd=tmp_path, store=tmp_path
    )
    assert "Traceback (most recent call last)" in verbose.stderr


def test_a_function_that_cannot_be_pickled_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "locked.py").write_text(
        "import threading\n"
        "def make():\n"
        "    lock = threading.Lock()\n"
        "    def f(x):\n"
        "        with lock:\n"
        "            return x\n"
        "    return f\n"
        "f = make()\n"
    )
    result = kubemap_run("locked.py:f", "--inputs", "-", stdin="1\n", cwd=tmp_path, store=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "function locked.make.<locals>.f cannot be pickled" in line and "_thread.lock" in line


def test_a_result_that_cannot_be_pickled_names_index_and_type(tmp_path: Path) -> None:
    (tmp_path / "returns.py").write_text(
        "import threading\ndef f(x):\n    return threading.Lock() if x == 2 else x\n"
    )
    # One slice of the three on one worker: the other two results of the slice are kept.
    # (With a slice each, the failure of index 1 could stop the run before 0 or 2 finished.)
    one_slice = ("--items-per-pod", "3", "--parallelism", "1")
    result = kubemap_run(
        "returns.py:f", "--inputs", "-", *one_slice, stdin="1\n2\n3\n", cwd=tmp_path, store=tmp_path
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["1", "null", "3"]
    lines = result.stderr.strip().splitlines()
    # the count, the failure, the --verbose hint, how to rerun it
    assert len(lines) == 4, result.stderr
    assert lines[3].strip().startswith("`kubemap retry ")
    assert lines[1].startswith("  index 1: SerializationError: the result of input 1")
    assert "type _thread.lock" in lines[1]
    verbose = kubemap_run(
        "returns.py:f",
        "--inputs",
        "-",
        "-v",
        *one_slice,
        stdin="1\n2\n3\n",
        cwd=tmp_path,
        store=tmp_path,
    )
    # The remote traceback is the error itself, not kubemap's pickling frames.
    assert "pickling.py" not in verbose.stderr and "During handling" not in verbose.stderr


def test_ctrl_c_cancels_and_says_so_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    (tmp_path / "slow.py").write_text(
        "import pathlib, time\n"
        f"def f(x):\n    pathlib.Path({str(marker)!r}).touch()\n    time.sleep(60)\n    return x\n"
    )
    (tmp_path / "in.txt").write_text("1\n2\n")
    env = {**os.environ, "KUBEMAP_STORE": str(tmp_path / "store")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubemap",
            "run",
            "slow.py:f",
            "--inputs",
            "in.txt",
            "--name",
            "slowtask",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        for _ in range(600):
            if marker.exists():
                break
            time.sleep(0.05)
        assert marker.exists(), "the function never started"
        # The CLI's process only: its worker processes are stopped by the cancel.
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        f"interrupted: task slowtask cancelled; finished results stay in "
        f"{(tmp_path / 'store').resolve().as_uri()}/slowtask (--detach leaves a Kubernetes task "
        "running)"
    ]


def test_detach_needs_the_kubernetes_backend(tmp_path: Path) -> None:
    result = kubemap_run(
        f"{SQUARE}:square", "--inputs", "-", "--detach", stdin="1\n", store=tmp_path
    )
    assert result.returncode == 2 and "--detach" in result.stderr and "kubernetes" in result.stderr


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
        "from kubemap.cli.main import main\n"
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


def test_blank_lines_in_text_input_are_items_so_results_line_up(tmp_path: Path) -> None:
    # A text file with blank lines: one result per input line, the blank ones included.
    lines = [f"word{i} " * (i % 3) for i in range(53)]  # every third line is blank
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n")
    result = kubemap_run(
        f"{SQUARE}:word_count",
        "--inputs",
        str(tmp_path / "text.txt"),
        "--format",
        "lines",
        store=tmp_path / "store",
    )
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == len(lines) == 53
    assert [bool(counts) for counts in out] == [bool(line.strip()) for line in lines]
    assert sum(1 for counts in out if not counts) == 18  # the blank lines, in their places


def test_a_syntax_error_names_its_place_once_and_verbose_drops_the_hint(tmp_path: Path) -> None:
    (tmp_path / "syn.py").write_text("def f(x):\n    return x +\n")
    result = kubemap_run("syn.py:f", "--inputs", "-", stdin="1\n", cwd=tmp_path, store=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: cannot import syn.py: SyntaxError: invalid syntax (syn.py, line 2) "
        "(--verbose for the traceback)"
    ]
    verbose = kubemap_run(
        "syn.py:f", "--inputs", "-", "-v", stdin="1\n", cwd=tmp_path, store=tmp_path
    )
    last = verbose.stderr.strip().splitlines()[-1]
    assert verbose.returncode == 1 and "return x +" in verbose.stderr  # the traceback, shown
    assert last == "Error: cannot import syn.py: SyntaxError: invalid syntax (syn.py, line 2)"


def test_no_cluster_for_a_kubernetes_run_names_the_cli_option(tmp_path: Path) -> None:
    env_store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-m", "kubemap", "run", f"{SQUARE}:square", "--inputs", "-",
         "--backend", "kubernetes", "--store", "s3://bucket/prefix"],
        input="1\n", capture_output=True, text=True, timeout=60,
        env={**os.environ, "KUBEMAP_STORE": str(env_store), "KUBECONFIG": str(tmp_path / "no")},
    )  # fmt: skip
    assert done.returncode == 1 and "KUBECONFIG" in done.stderr
    assert "backend='local'" not in done.stderr and "--backend local" in done.stderr
