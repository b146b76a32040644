"""kubemap.core decides; it must not do I/O: importing it loads no client library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("boto3", "botocore", "kubernetes", "kopf", "urllib3")


def test_importing_the_core_loads_no_io_library() -> None:
    code = (
        "import sys\n"
        "import kubemap.core.plan, kubemap.core.policy, kubemap.core.status, kubemap.core.ranges\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_layer_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    lint = subprocess.run(
        [str(lint_imports), "--no-cache"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "0 broken" in lint.stdout
