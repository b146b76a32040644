"""`kubemap run` in a terminal, as a user sees it: the command runs on a pseudo-terminal
(stdout and stderr both on it, 100 columns) and its bytes are replayed on a small screen
model (carriage return, newline, erase-line, cursor-up), so what is tested is the screen."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SQUARE = ROOT / "examples" / "square.py"
CSI = re.compile(r"\x1b\[(\d*)([A-Za-z])")


def screen(output: str) -> list[str]:
    """The lines a terminal shows after `output`, trailing blanks dropped."""
    lines: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(output):
        char = output[i]
        match = CSI.match(output, i)
        if match:
            count, code = int(match.group(1) or 1), match.group(2)
            if code == "A":
                row = max(0, row - count)
            elif code == "K":  # erase to the end of the line (2K: the whole line)
                lines[row] = [] if match.group(1) == "2" else lines[row][:col]
            i = match.end()
            continue
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            col = 0
            while len(lines) <= row:
                lines.append([])
        elif char.isprintable():
            line = lines[row]
            line.extend(" " * (col - len(line) + 1) if col >= len(line) else "")
            line[col] = char
            col += 1
        i += 1
    shown = ["".join(line).rstrip() for line in lines]
    while shown and not shown[-1]:
        shown.pop()
    return shown


def run_in_terminal(args: list[str], *, cwd: Path, store: Path) -> tuple[int, str]:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {**os.environ, "KUBEMAP_STORE": str(store), "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubemap", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 50
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("progress", ["--progress", "auto"])
def test_the_progress_bar_is_gone_when_the_results_are_printed(
    tmp_path: Path, progress: str
) -> None:
    # Slow enough (about 1.5 s) for the automatic bar, which waits a second, to appear.
    (tmp_path / "slowsquare.py").write_text(
        "import time\ndef f(x):\n    time.sleep(0.3)\n    return x * x\n"
    )
    (tmp_path / "in.txt").write_text("".join(f"{i}\n" for i in range(1, 11)))
    args = ["run", "slowsquare.py:f", "--inputs", "in.txt", "-p", "2", "--items-per-pod", "1"]
    code, output = run_in_terminal(
        args + ([progress] if progress != "auto" else []), cwd=tmp_path, store=tmp_path / "s"
    )
    assert code == 0, output
    assert "item" in output  # the bar was drawn while the run went on
    assert screen(output) == [str(i * i) for i in range(1, 11)]  # and nothing of it is left


def test_a_short_run_leaves_only_its_results_on_screen(tmp_path: Path) -> None:
    # The issue's own command: ten squares, done well within the bar's one-second delay.
    code, output = run_in_terminal(
        ["run", f"{SQUARE}:square", "--inputs", str(ROOT / "examples" / "numbers.txt")],
        cwd=tmp_path,
        store=tmp_path / "s",
    )
    assert code == 0, output
    numbers = (ROOT / "examples" / "numbers.txt").read_text().split()
    assert screen(output) == [str(int(n) ** 2) for n in numbers]
