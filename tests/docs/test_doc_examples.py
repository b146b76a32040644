"""Every code block of README.md, docs/ and examples/README.md that can run here runs: shell
blocks through bash, Python blocks through pytest-examples (a block whose output is shown in
`#>` comments has that output checked). Blocks marked test="s3" run against a local S3
server (SeaweedFS, bucket "kubemap"); those marked test="e2e" run on the test cluster
(tests/e2e/test_docs_cluster.py); a block that cannot run anywhere here is marked
test="skip" with why="..." in its fence."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from pytest_examples import CodeExample, EvalExample, find_examples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import contextlib

import docblocks

pytestmark = pytest.mark.timeout(180)
EXAMPLES = list(find_examples(*docblocks.DOCS))
FAST_SHELL = docblocks.shell_blocks(None)
S3_SHELL = docblocks.shell_blocks("s3")
FAST_PYTHON = [ex for ex in EXAMPLES if ex.prefix_settings().get("test") is None]
S3_PYTHON = [ex for ex in EXAMPLES if ex.prefix_settings().get("test") == "s3"]
BUCKET = "kubemap"
# What the docs' S3 examples find in the bucket (the files guide lists and maps over them).
SEEDED = {
    "demo/in/a.txt": b"one\n",
    "demo/in/notes/b.txt": b"two\n",
    "demo/in/notes/c.md": b"not a .txt\n",
}


def _ours(block_path: Path) -> bool:
    return (
        block_path == docblocks.REPO / "README.md" or docblocks.REPO / "docs" in block_path.parents
    )


def test_every_block_says_where_it_runs() -> None:
    found = docblocks.blocks()
    code = [b for b in found if b.lang in (*docblocks.SHELLS, "python", "py")]
    assert len(code) >= 40  # the parser sees the blocks at all
    for block in code:
        assert block.where in docblocks.PLACES, f"{block.id}: test={block.where!r}"
        if block.where == "skip" and _ours(block.path):
            assert block.settings.get("why"), f'{block.id}: test="skip" needs why="..."'
    assert FAST_SHELL, "no shell block runs in the fast suite"
    assert len(FAST_PYTHON) >= 15, "the docs' Python examples are not found"


def test_the_readme_starts_with_the_two_set_up_commands() -> None:
    """What CI and users run, word for word; the docs' own first page (the README) also
    gives the one command that serves the site."""
    readme = [b for b in docblocks.blocks() if b.path == docblocks.REPO / "README.md"]
    assert readme[0].source.splitlines() == [
        "python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . && "
        ".venv/bin/python examples/quickstart.py",
        "./scripts/test",
    ]
    assert any(".venv/bin/mkdocs serve" in b.source for b in readme)


def test_every_doc_page_has_a_block_that_runs() -> None:
    """Each guide shows at least one example that CI executes (here or on the cluster)."""
    runs = {b.path for b in docblocks.blocks() if b.where in (None, "s3", "e2e")}
    guides = sorted((docblocks.REPO / "docs" / "guides").glob("*.md"))
    assert guides
    assert [g.name for g in guides if g not in runs] == []


def _environment(tmp_path: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBEMAP_STORE": str(tmp_path / "store"),
        "TMPDIR": str(tmp_path),  # where the CLI examples' --output goes
    }


def run_shell(source: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", source],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )


def _scratch(tmp_path: Path) -> Path:
    # A scratch directory that sees the repository's examples/, so that outputs land there
    # and not in the checkout.
    (tmp_path / "examples").symlink_to(docblocks.REPO / "examples")
    (tmp_path / "docs").symlink_to(docblocks.REPO / "docs")  # docs/docsgen/figures.py
    return tmp_path


@pytest.mark.parametrize("block", FAST_SHELL, ids=lambda b: b.id)
def test_shell_block_runs(block: docblocks.Block, tmp_path: Path) -> None:
    done = run_shell(block.source, _scratch(tmp_path), _environment(tmp_path))
    assert done.returncode == 0, f"{block.id}\n{block.source}\n{done.stderr}"


def test_the_cli_block_does_what_it_says(tmp_path: Path) -> None:
    [block] = [
        b for b in FAST_SHELL if "examples/numbers.txt" in b.source and b.path.name == "cli.md"
    ]
    done = run_shell(block.source, _scratch(tmp_path), _environment(tmp_path))
    assert done.returncode == 0, done.stderr
    squares = [line for line in done.stdout.splitlines() if line.isdigit()]
    assert squares == [str(i * i) for i in range(1, 11)]


def test_the_failing_cli_block_prints_what_the_guide_shows(tmp_path: Path) -> None:
    [block] = [b for b in FAST_SHELL if "--name strict" in b.source]
    done = run_shell(f"exec 2>&1\n{block.source}", _scratch(tmp_path), _environment(tmp_path))
    shown = next(
        b.source
        for b in docblocks.blocks()
        if b.path == block.path and b.lang == "text" and b.line > block.line
    )
    assert done.stdout == shown


@pytest.fixture
def in_scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A block runs in a scratch directory with its own default store."""
    monkeypatch.chdir(_scratch(tmp_path))
    monkeypatch.setenv("KUBEMAP_STORE", str(tmp_path / "store"))
    return tmp_path


@pytest.fixture
def s3_bucket(s3_server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The bucket the docs' S3 examples use, emptied and seeded, and the AWS variables."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name=s3_server.region,
    )
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    for key, body in SEEDED.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    yield BUCKET


def _run(example: CodeExample, eval_example: EvalExample) -> None:
    eval_example.set_config(line_length=200)  # a long printed line stays one `#>` line
    if "#>" in example.source:
        eval_example.run_print_check(example)
    else:
        eval_example.run(example)


@pytest.mark.parametrize("example", FAST_PYTHON, ids=str)
def test_python_block_runs(
    example: CodeExample, eval_example: EvalExample, in_scratch: Path
) -> None:
    _run(example, eval_example)


@pytest.mark.parametrize("example", S3_PYTHON, ids=str)
def test_python_block_runs_on_s3(
    example: CodeExample, eval_example: EvalExample, in_scratch: Path, s3_bucket: str
) -> None:
    _run(example, eval_example)


@pytest.mark.parametrize("block", S3_SHELL, ids=lambda b: b.id)
def test_shell_block_runs_on_s3(block: docblocks.Block, tmp_path: Path, s3_bucket: str) -> None:
    done = run_shell(block.source, _scratch(tmp_path), _environment(tmp_path))
    assert done.returncode == 0, f"{block.id}\n{block.source}\n{done.stderr}"
