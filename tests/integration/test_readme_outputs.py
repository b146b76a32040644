"""A reader who runs the README's commands from the checkout leaves nothing behind in it
(issue 18, item 22): every file a shell block writes goes outside the working tree, or to
a path .gitignore covers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import docblocks

WRITES = re.compile(r"--output[= ]\s*(\S+)|(?<![-=>2&])>>?\s*(\S+)")


def test_readme_commands_write_outside_the_checkout() -> None:
    written = []
    for block in docblocks.blocks():
        if block.lang not in docblocks.SHELLS:
            continue
        code = "\n".join(line.split(" #")[0] for line in block.source.splitlines())
        for match in WRITES.finditer(code):
            target = (match[1] or match[2]).strip("'\"")
            if target.startswith(("&", "/dev/")):
                continue
            written.append((block.id, target))
    assert written, "the README's CLI example writes its results to a file"
    inside = []
    for where, target in written:
        if target.startswith(("/", "$", "~")):
            continue  # an absolute path, $TMPDIR or the home directory: not the checkout
        ignored = (
            subprocess.run(
                ["git", "check-ignore", "-q", "--no-index", target], cwd=docblocks.REPO
            ).returncode
            == 0
        )
        if not ignored:
            inside.append(f"{where}: {target}")
    assert inside == [], "README commands that write into the checkout: " + ", ".join(inside)
