"""The README blocks marked test="e2e", run against the test cluster: the SDK finds the
chart's default store (ConfigMap kubemap-defaults) with no store and no $KUBEMAP_STORE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2ekit import kubectl
from pytest_examples import CodeExample, EvalExample, find_examples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import docblocks

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("kubemap_installed", "operator"),
]
CLUSTER_PYTHON = [
    ex for ex in find_examples(*docblocks.DOCS) if ex.prefix_settings().get("test") == "e2e"
]
CLUSTER_SHELL = docblocks.shell_blocks("e2e")
# Names the README's SDK block uses without defining them (it shows the calls, not the data).
GIVEN = {"prompts": ["short", "a longer prompt"]}


@pytest.mark.parametrize("example", CLUSTER_PYTHON, ids=str)
def test_python_block_runs_on_the_cluster(
    example: CodeExample, eval_example: EvalExample, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBEMAP_STORE", raising=False)  # the chart's ConfigMap must give it
    eval_example.run(example, module_globals=dict(GIVEN))


@pytest.mark.parametrize("block", CLUSTER_SHELL, ids=lambda b: b.id)
def test_shell_block_runs_on_the_cluster(block: docblocks.Block) -> None:
    tools = str(Path(kubectl()).parent)
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.source],
        cwd=docblocks.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"{block.id}\n{block.source}\n{done.stdout}\n{done.stderr}"
