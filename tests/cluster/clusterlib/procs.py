"""Start components in their own process groups and stop them by PID, never by name.

A component is recorded as (pid, start time): the start time, read from /proc, makes sure
that ``down`` never signals an unrelated process that reused the PID. Every component also
carries ``KUBEMAP_TESTCLUSTER_ID`` in its environment, which its descendants inherit (the
node emulator's pods included), so ``down`` can find a straggler that left the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER_ENV = "KUBEMAP_TESTCLUSTER_ID"


@dataclass(frozen=True)
class Proc:
    name: str
    pid: int
    start_time: int  # field 22 of /proc/<pid>/stat, in clock ticks since boot
    log: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Proc:
        return cls(
            str(data["name"]), int(str(data["pid"])), int(str(data["start_time"])), str(data["log"])
        )


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (all held open while choosing)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int, started: int) -> bool:
    """True while the very process we started (not a zombie, not a PID reuse) exists."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == started


def spawn(name: str, cmd: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path) -> Proc:
    """Start ``cmd`` in a new session (so its own process group), output appended to ``log``."""
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    started = start_time(popen.pid)
    if started is None:
        code = popen.wait()
        raise RuntimeError(f"{name} exited at once with code {code}; see {log}")
    return Proc(name=name, pid=popen.pid, start_time=started, log=str(log))


def live_processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z":
                yield int(entry.name), fields


def members(proc: Proc, cluster_id: str) -> set[int]:
    """PIDs that belong to ``proc``: its process group, its descendants, and any process
    whose environment carries this cluster's marker and descends from nothing else alive."""
    table = dict(live_processes())
    found: set[int] = set()
    if is_alive(proc.pid, proc.start_time):
        found.add(proc.pid)
    found |= {pid for pid, f in table.items() if int(f[2]) == proc.pid}  # pgid == leader pid
    changed = True
    while changed:  # close over parent -> child links
        kids = {pid for pid, f in table.items() if int(f[1]) in found} - found
        found |= kids
        changed = bool(kids)
    if proc.name == "node-emulator":  # pods it started in their own sessions
        found |= marked(cluster_id)
    return found


def marked(cluster_id: str) -> set[int]:
    needle = f"{MARKER_ENV}={cluster_id}".encode()
    pids = set()
    for pid, _ in live_processes():
        if pid == os.getpid():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if needle in env.split(b"\0"):
            pids.add(pid)
    return pids


def _running(pids: set[tuple[int, int]]) -> set[tuple[int, int]]:
    return {(pid, started) for pid, started in pids if is_alive(pid, started)}


def _signal_all(pids: set[tuple[int, int]], sig: signal.Signals) -> None:
    for pid, _ in _running(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _identified(pids: set[int]) -> set[tuple[int, int]]:
    return {(pid, started) for pid in pids if (started := start_time(pid)) is not None}


def stop(proc: Proc, cluster_id: str, grace: float = 10.0) -> set[int]:
    """SIGTERM the component and everything it started, wait up to ``grace`` seconds,
    SIGKILL what remains; return the PIDs still alive afterwards (empty when clean)."""
    found = _identified(members(proc, cluster_id))
    if not found:
        return set()
    _signal_all({(proc.pid, proc.start_time)}, signal.SIGTERM)  # the leader first: it stops its own
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and is_alive(proc.pid, proc.start_time):
        time.sleep(0.1)
    found |= _identified(members(proc, cluster_id))
    if _running(found):
        _signal_all(found, signal.SIGTERM)
        time.sleep(1.0)
        _signal_all(found, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _running(found) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {pid for pid, _ in _running(found)}


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, alive: Callable[[], bool]
) -> None:
    """Poll ``check`` until it is true; fail early when the component died (``alive``)."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            if check():
                return
        except Exception:  # not up yet: connection refused, 503, ...
            pass
        if not alive():
            raise RuntimeError(f"{what}: the process exited before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def tail(path: Path | str, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
