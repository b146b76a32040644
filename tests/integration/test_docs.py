"""Every code block of README.md and examples/README.md that can run here runs: shell blocks
through bash, Python blocks through pytest-examples; those that need the test cluster run in
tests/e2e/test_docs_cluster.py, and a block that cannot run here says so in its fence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_examples import CodeExample, EvalExample, find_examples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import docblocks

pytestmark = pytest.mark.timeout(180)
FAST_SHELL = docblocks.shell_blocks(None)
FAST_PYTHON = [
    ex for ex in find_examples(*docblocks.DOCS) if ex.prefix_settings().get("test") is None
]


def test_every_block_says_where_it_runs() -> None:
    found = docblocks.blocks()
    code = [b for b in found if b.lang in (*docblocks.SHELLS, "python", "py")]
    assert len(code) >= 8  # the parser sees the blocks at all
    for block in code:
        assert block.where in docblocks.PLACES, f"{block.id}: test={block.where!r}"
    assert FAST_SHELL, "no shell block runs in the fast suite"


def run_shell(source: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", source],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )


@pytest.mark.parametrize("block", FAST_SHELL, ids=lambda b: b.id)
def test_shell_block_runs(block: docblocks.Block, tmp_path: Path) -> None:
    # From a scratch directory that sees the repository's examples/, so that outputs such
    # as --output counts.jsonl land there and not in the checkout.
    (tmp_path / "examples").symlink_to(docblocks.REPO / "examples")
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBEMAP_STORE": str(tmp_path / "store"),
        "TMPDIR": str(tmp_path),  # where the CLI example's --output goes
    }
    done = run_shell(block.source, tmp_path, env)
    assert done.returncode == 0, f"{block.id}\n{block.source}\n{done.stderr}"


def test_the_cli_block_does_what_it_says(tmp_path: Path) -> None:
    [block] = [b for b in FAST_SHELL if "examples/numbers.txt" in b.source]
    (tmp_path / "examples").symlink_to(docblocks.REPO / "examples")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBEMAP_STORE": str(tmp_path / "store"),
        "TMPDIR": str(tmp_path),  # where the CLI example's --output goes
    }
    done = run_shell(block.source, tmp_path, env)
    assert done.returncode == 0, done.stderr
    squares = [line for line in done.stdout.splitlines() if line.isdigit()]
    assert squares == [str(i * i) for i in range(1, 11)]
    assert (tmp_path / "counts.jsonl").read_text().count("\n") > 10


@pytest.mark.parametrize("example", FAST_PYTHON, ids=str)
def test_python_block_runs(example: CodeExample, eval_example: EvalExample) -> None:
    eval_example.run(example)
