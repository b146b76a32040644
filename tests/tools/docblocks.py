"""The fenced code blocks of the README files and docs/, read from the files themselves.

pytest-examples finds and runs the Python blocks; shell blocks are found here with the same
fence rule. A block's fence says where it runs: ```sh (the fast suite, tests/docs), ```sh
test="s3" (the fast suite, against a local S3 server), ```sh test="e2e" (against the test
cluster) or ```sh test="skip" why="..."``` (it cannot run here: it installs kubemap, builds
images, needs docker/kind or your own registry; `why` says which).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = (REPO / "README.md", REPO / "examples" / "README.md", *sorted((REPO / "docs").rglob("*.md")))
# s3: runs in tests/docs against the SeaweedFS fixture (AWS_* variables set, bucket "kubemap")
PLACES = (None, "e2e", "skip", "s3")
SHELLS = ("sh", "bash", "shell")
_FENCE = re.compile(r"^```([^\s`]+)([^\n]*)\n(.*?)^```", re.M | re.S)
_SETTING = re.compile(r"""([\w-]+)=(["'])(.*?)\2""")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    settings: dict[str, str]
    source: str

    @property
    def where(self) -> str | None:
        return self.settings.get("test")

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks(paths: tuple[Path, ...] = DOCS) -> list[Block]:
    found = []
    for path in paths:
        text = path.read_text()
        for match in _FENCE.finditer(text):
            lang, rest, source = match.groups()
            settings = {m.group(1): m.group(3) for m in _SETTING.finditer(rest)}
            line = text[: match.start()].count("\n") + 1
            found.append(Block(path, line, lang.lower(), settings, source))
    return found


def shell_blocks(where: str | None) -> list[Block]:
    return [b for b in blocks() if b.lang in SHELLS and b.where == where]
