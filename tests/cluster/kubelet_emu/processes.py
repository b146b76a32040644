"""Container processes: start in their own process group, track, signal, read termination messages.

Every process the emulator starts is registered here, so that shutdown can signal all of
them by process group, and written to a pid file (pid + kernel start time), so that an
emulator restarted after a crash can kill the leftovers of its predecessor without ever
signalling an unrelated process that reused the pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kubelet_emu.processes")

MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


@dataclass(frozen=True)
class ContainerPaths:
    """Where one container's files live: <poddir>/<name>.log and <poddir>/<name>/..."""

    pod_dir: Path
    name: str

    @property
    def log(self) -> Path:
        return self.pod_dir / f"{self.name}.log"

    @property
    def dir(self) -> Path:
        return self.pod_dir / self.name

    @property
    def termination_log(self) -> Path:
        return self.dir / "termination-log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class ProcessRegistry:
    """All live container processes, so that shutdown can reach every one of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._closed = False

    def start(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, paths: ContainerPaths
    ) -> subprocess.Popen[bytes]:
        """Start a container process; raise OSError if it cannot be executed."""
        paths.dir.mkdir(parents=True, exist_ok=True)
        paths.termination_log.write_bytes(b"")
        with self._lock:
            if self._closed:
                raise OSError("the node emulator is shutting down")
            with paths.log.open("ab") as out:
                proc = subprocess.Popen(
                    list(argv),
                    cwd=cwd,
                    env=dict(env),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            self._procs[proc.pid] = proc
        paths.pid_file.write_text(f"{proc.pid} {_start_ticks(proc.pid) or ''}\n")
        return proc

    def wait(self, proc: subprocess.Popen[bytes]) -> int:
        """Wait for the process, then kill what it left in its group, as a runtime kills a container."""
        code = proc.wait()
        kill_group(proc.pid, signal.SIGKILL)
        with self._lock:
            self._procs.pop(proc.pid, None)
        return code

    def shutdown(self, grace: float) -> int:
        """SIGTERM every process group, SIGKILL what is left after `grace` seconds."""
        with self._lock:
            self._closed = True
            procs = list(self._procs.values())
        for proc in procs:
            kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            kill_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        return len(procs)


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_leftovers(pods_dir: Path) -> int:
    """Kill process groups recorded in pid files by an earlier emulator, if still the same processes."""
    killed = 0
    for pid_file in pods_dir.glob("*/*/pid"):
        try:
            pid_text, _, ticks = pid_file.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if ticks and _start_ticks(pid) == ticks:
            log.warning("killing process group %d left by an earlier emulator (%s)", pid, pid_file)
            kill_group(pid, signal.SIGKILL)
            killed += 1
        pid_file.unlink(missing_ok=True)
    return killed


def _tail(path: Path, max_lines: int, max_bytes: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes * 4))
            data = f.read()
    except OSError:
        return ""
    lines = data.splitlines(keepends=True)[-max_lines:]
    return b"".join(lines)[-max_bytes:].decode("utf-8", errors="replace")


def termination_message(paths: ContainerPaths, policy: str, exit_code: int) -> str:
    """What kubelet puts in state.terminated.message: the file, or the log tail on error."""
    try:
        with paths.termination_log.open("rb") as f:
            data = f.read(MAX_TERMINATION_MESSAGE)
    except OSError:
        data = b""
    if data.strip():
        return data.decode("utf-8", errors="replace")
    if policy == "FallbackToLogsOnError" and exit_code != 0:
        return _tail(paths.log, FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES)
    return ""
