"""Catch what a worker prints, per item, and keep it (bounded) in the task's store
(kubemap.task.output holds the format).

Function mode (`ItemCapture`, used by run_slice): around each item, file descriptors 1 and 2
point at one temporary file (dup2), so the output of C extensions and subprocesses is caught
as well as print()'s; after the item the file is copied to the real stdout (so `kubectl logs`
and a local run's terminal still show it, when the item ends) and its head and tail are kept.
Only the main thread captures: descriptors belong to the process, so a worker run in a
thread beside others (the tests' warm pools) would catch its neighbours' output.

Container mode (`main`): the operator runs a container's command through

    python -m kubemap.runtime.capture -- COMMAND [ARGS...]

when the container's image holds kubemap (see the operator's builder): the command's stdout
and stderr go through a pipe to the real stdout and into the kept copy, SIGTERM and SIGINT
are passed on, and the wrapper exits with the command's exit code. It also leaves the slice's timing
record (kubemap.task.timings), so `kubemap get` and `kubemap timeline` cover container tasks.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import TextIO

from kubemap.contract import ENV_ATTEMPT, ENV_COUNT, ENV_INDEX, ENV_TASK_URL
from kubemap.stores import Store, open_store
from kubemap.task import output as keptoutput
from kubemap.task import timings

_COPY_CHUNK = 1 << 20
EXIT_CANNOT_RUN = 127


class ItemCapture:
    """Points fds 1 and 2 at a temporary file around each item of one slice; `close`
    puts them back (idempotent, safe to call from a finally after any interruption)."""

    def __init__(self, output: keptoutput.SliceOutput) -> None:
        self.output = output
        _flush()
        self.saved_out = os.dup(1)
        self.saved_err = os.dup(2)
        self.fd = _scratch_fd()
        self.redirected = False
        # print() must reach fd 1 even where sys.stdout was swapped for something else (a
        # test runner's capture): for the slice, the streams write to the descriptors.
        self.streams = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _on_fd(sys.stdout, 1), _on_fd(sys.stderr, 2)

    @classmethod
    def start(cls, output: keptoutput.SliceOutput) -> ItemCapture | None:
        """A capture, or None where none can be made (not the main thread, keeping off)."""
        if not keptoutput.keeping_enabled():
            return None
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            return cls(output)
        except OSError:
            return None

    def begin(self) -> None:
        _flush()
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)
        self.redirected = True

    def end(self, index: int, seconds: float) -> None:
        self._restore()
        try:
            self._keep(index, seconds)
        except OSError as exc:  # the temporary file failed (a full disk): lose this copy only
            with contextlib.suppress(OSError):
                os.write(self.saved_err, f"kubemap: output of index {index} lost: {exc}\n".encode())
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
                os.lseek(self.fd, 0, os.SEEK_SET)

    def _keep(self, index: int, seconds: float) -> None:
        size = os.lseek(self.fd, 0, os.SEEK_END)
        if not size:
            return
        with contextlib.suppress(OSError):  # a closed terminal must not lose the kept copy
            _copy(self.fd, self.saved_out, size)
        limit = self.output.room()
        if not limit:  # the slice kept all it may: note only how much this index printed
            kept, cut = b"", size
        elif size <= limit:
            kept, cut = os.pread(self.fd, size, 0), 0
        else:
            head_limit = min(keptoutput.HEAD_BYTES, limit // 4)
            tail_limit = limit - head_limit
            head = os.pread(self.fd, head_limit, 0)
            tail = os.pread(self.fd, tail_limit, size - tail_limit) if tail_limit else b""
            kept, cut = keptoutput.bounded(head, tail, size)
        self.output.add(index, kept, cut, seconds)

    def _restore(self) -> None:
        if self.redirected:
            _flush()
            os.dup2(self.saved_out, 1)
            os.dup2(self.saved_err, 2)
            self.redirected = False

    def close(self) -> None:
        self._restore()
        for fd in (self.saved_out, self.saved_err):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.saved_out = self.saved_err = -1
        sys.stdout, sys.stderr = self.streams


_scratch: tuple[int, int] | None = None  # (pid, fd): one unnamed temporary file per process


def _scratch_fd() -> int:
    """The process's scratch file for items' output, made once (a forked child makes its
    own): a slice, or a pool's lease, costs no file creation."""
    global _scratch
    if _scratch is None or _scratch[0] != os.getpid():
        handle = tempfile.TemporaryFile(prefix="kubemap-item-")  # noqa: SIM115 (kept for good)
        _scratch = (os.getpid(), os.dup(handle.fileno()))
        handle.close()  # the dup keeps the unnamed file open
    os.ftruncate(_scratch[1], 0)
    os.lseek(_scratch[1], 0, os.SEEK_SET)
    return _scratch[1]


def _on_fd(stream: TextIO | None, fd: int) -> TextIO | None:
    """`stream` if it writes to `fd`, else a line-buffered text stream that does."""
    try:
        if stream is not None and stream.fileno() == fd:
            return stream
    except (OSError, ValueError, io.UnsupportedOperation, AttributeError):
        pass
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return open(fd, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _copy(source: int, target: int, size: int) -> None:
    """Copy with pread and write: write() moves a shared file offset under its lock, so
    the local backend's worker processes, sharing one stdout redirected to a file, append
    after each other; sendfile gives no such promise."""
    offset = 0
    while offset < size:
        data = os.pread(source, min(_COPY_CHUNK, size - offset), offset)
        if not data:
            return
        _write_all(target, data)
        offset += len(data)


# -- container mode: the wrapper around the user's command ---------------------------------
def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(environ.get(name, "").strip() or default)
    except ValueError:
        return default


def run_command(command: list[str], kept: keptoutput.HeadTail) -> int:
    """Run `command` with its stdout and stderr through one pipe, echoed to fd 1 and fed to
    `kept`; its exit code (128 + N for a signal, 127 if it cannot run)."""
    _flush()
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        message = f"kubemap: cannot run {command[0]!r}: {exc.strerror or exc}\n".encode()
        os.write(2, message)
        kept.feed(message)
        return EXIT_CANNOT_RUN

    def forward(signum: int, frame: FrameType | None) -> None:
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert child.stdout is not None
        pipe = child.stdout.fileno()
        while True:
            data = os.read(pipe, 65536)
            if not data:
                break
            with contextlib.suppress(OSError):
                _write_all(1, data)
            kept.feed(data)
        code = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 128 - code if code < 0 else code


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m kubemap.runtime.capture -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    env = os.environ if environ is None else environ
    url = env.get(ENV_TASK_URL, "").strip()
    if not url or not keptoutput.keeping_enabled(env):
        _flush()
        try:
            os.execvp(args[0], args)  # nothing to keep: become the command
        except OSError as exc:
            print(f"kubemap: cannot run {args[0]!r}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_CANNOT_RUN
    first, count = _int(env, ENV_INDEX, 0), max(1, _int(env, ENV_COUNT, 1))
    attempt, worker = _int(env, ENV_ATTEMPT, 0), env.get("HOSTNAME", "") or os.uname().nodename
    kept = keptoutput.HeadTail()
    wall, began = time.time(), time.perf_counter()
    code = run_command(args, kept)
    seconds = time.perf_counter() - began
    text, cut = kept.kept()
    output = keptoutput.SliceOutput(first, count, attempt, worker)
    output.share(text, cut, seconds)
    try:
        task: Store = open_store(url)
        keptoutput.write_output(task, output)
        if timings.recording_enabled(dict(env)):
            timings.write_timing(task, _command_timing(first, count, attempt, worker, wall,
                                                       seconds, code))  # fmt: skip
    except Exception as exc:  # keeping the output must never change the command's outcome
        print(f"kubemap: could not keep the command's output: {exc}", file=sys.stderr)
    return code


def _command_timing(
    first: int, count: int, attempt: int, worker: str, wall: float, seconds: float, code: int
) -> timings.SliceTiming:
    """The slice's timing record (task.timings), so `kubemap get` and `kubemap timeline`
    see container tasks too: the command ran the slice at once, so each index counts at the
    slice's time / count, and the slice's first index stands for its slowest."""
    items = timings.ItemTimes()
    for index in range(first, first + count):
        items.add(index, seconds / count)
    return timings.SliceTiming(
        first=first,
        count=count,
        attempt=attempt,
        worker=worker,
        start=wall,
        compute=seconds,
        ran=count,
        succeeded=count if code == 0 else 0,
        failed=0 if code == 0 else count,
        slowest=items.slowest,
        buckets=dict(items.buckets),
    )


if __name__ == "__main__":
    sys.exit(main())
