"""What a worker printed is kept in the task's store (kubemap.task.output), against real
SeaweedFS and a local directory: per item, at the file-descriptor level (print, os.write, a
C library's printf, a subprocess), bounded, one object per slice that printed and none for a
quiet one, still echoed to the real stdout, and `kubemap logs NAME --index I` prints it after
the run; the container-mode wrapper keeps a command's output and passes on its exit code.
Counts objects and bytes, never times."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import kubemap
import pytest
from kubemap.runtime import worker
from kubemap.stores import Store, open_store
from kubemap.task import data as taskdata
from kubemap.task import output as keptoutput
from kubemap.task.output import OUTPUT_PREFIX, read_output
from kubemap.task.timings import read_timings

pytestmark = pytest.mark.timeout(180)


def noisy(x: int) -> int:
    print(f"print {x}")
    sys.stdout.flush()
    os.write(2, f"fd2 {x}\n".encode())
    if x % 10 == 3:
        subprocess.run(["sh", "-c", f"echo child {x}"], check=True)
        libc = ctypes.CDLL(None)
        libc.printf(b"libc %d\n", x)
        libc.fflush(None)
    if x % 10 == 7:
        raise ValueError(f"seven {x}")
    return x


def quiet(x: int) -> int:
    return x + 1


def loud(x: int) -> int:
    sys.stdout.write("a" * 20_000 + "MIDDLE" + "z" * 200_000 + "END\n")
    return x


def _task(root: str, fn: object, items: list[int], name: str = "t") -> Store:
    task = open_store(root).child(name)
    taskdata.write_function(task, fn)
    total = taskdata.write_inputs(task, items)
    taskdata.write_meta(task, taskdata.TaskMeta.new(total, "fn"))
    return task


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubemap", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_every_kind_of_output_is_kept_per_item_and_echoed(
    s3_store_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    task = _task(s3_store_url, noisy, list(range(10)))
    outcome = worker.run_slice(task, 0, 10)
    assert len(outcome.succeeded) == 9 and len(outcome.failed) == 1
    assert list(task.list(OUTPUT_PREFIX)) == [f"{OUTPUT_PREFIX}000000000000-10-0"]  # one object
    (three,) = read_output(task, 3)
    assert three.text == b"print 3\nfd2 3\nchild 3\nlibc 3\n" and three.cut == 0
    assert three.attempt == 0 and three.seconds is not None
    (seven,) = read_output(task, 7)  # a failed index's output is kept as well
    assert seven.text == b"print 7\nfd2 7\n"
    echoed = capfd.readouterr().out  # still reaches the real stdout, per item, in order
    assert echoed.index("print 3\n") < echoed.index("libc 3\n") < echoed.index("print 4\n")


def test_a_quiet_slice_writes_nothing_and_the_switch_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = _task((tmp_path / "store").as_uri(), quiet, list(range(20)))
    worker.run_slice(task, 0, 10)
    assert list(task.list(OUTPUT_PREFIX)) == []
    task = _task((tmp_path / "store").as_uri(), noisy, list(range(20)), name="off")
    monkeypatch.setenv(keptoutput.ENV_KEEP_OUTPUT, "0")
    worker.run_slice(task, 0, 10)
    assert list(task.list(OUTPUT_PREFIX)) == []


def test_output_is_bounded_per_index_and_per_slice(s3_store_url: str) -> None:
    task = _task(s3_store_url, loud, list(range(80)))
    worker.run_slice(task, 0, 80)
    (key,) = list(task.list(OUTPUT_PREFIX))
    size = len(task.get(key))
    (first,) = read_output(task, 0)
    assert first.text.startswith(b"a" * keptoutput.HEAD_BYTES) and first.text.endswith(b"zEND\n")
    assert first.cut == 220_010 - keptoutput.INDEX_LIMIT
    assert f"... {first.cut} bytes cut ...".encode() in first.text
    assert b"MIDDLE" not in first.text
    # 64 indices fill the slice's 4 MiB; the rest keep 1 KiB each
    (last,) = read_output(task, 79)
    assert len(last.text) < keptoutput.SPILL_BYTES + 40 and last.text.endswith(b"zEND\n")
    assert size < keptoutput.SLICE_LIMIT + keptoutput.INDEX_LIMIT + 80 * 100


def test_past_twice_the_slice_limit_only_the_size_is_noted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keptoutput, "SLICE_LIMIT", 150_000)
    monkeypatch.setattr(keptoutput, "SPILL_BYTES", 10_000)
    task = _task((tmp_path / "store").as_uri(), loud, list(range(80)))
    worker.run_slice(task, 0, 80)
    (key,) = list(task.list(OUTPUT_PREFIX))
    assert len(task.get(key)) < 2 * 150_000 + keptoutput.INDEX_LIMIT + 80 * 20
    (last,) = read_output(task, 79)
    assert (last.text, last.cut) == (b"", 220_010)  # the size is still told
    shown = cli("logs", "t", "--index", "79", "--store", (tmp_path / "store").as_uri(),
                cwd=tmp_path)  # fmt: skip
    assert shown.returncode == 0 and "(220010 bytes printed, not kept" in shown.stdout


def test_a_local_run_keeps_one_object_per_slice_that_printed_and_logs_reads_it(
    s3_store_url: str, tmp_path: Path
) -> None:
    run = kubemap.submit(
        noisy,
        range(1000),
        store=s3_store_url,
        name="chatty",
        parallelism=2,
        items_per_pod=10,
        min_success_ratio=0.5,
    )
    run.wait()
    task = open_store(s3_store_url).child("chatty")
    objects = list(task.list(OUTPUT_PREFIX))
    assert len(objects) == 100  # one per slice, not one per item
    kept = sum(len(task.get(k)) for k in objects)
    print(f"1000 items: {len(objects)} objects, {kept} bytes kept")

    env = {**os.environ, "KUBEMAP_STORE": s3_store_url}
    shown = subprocess.run(
        [sys.executable, "-m", "kubemap", "logs", "chatty", "--index", "423"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0].startswith("==> index 423 (attempt 0, ")
    assert "print 423\nfd2 423\nchild 423\nlibc 423\n" in shown.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "kubemap", "logs", "chatty", "--index", "427"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert failed.returncode == 0 and "print 427\nfd2 427\n" in failed.stdout
    outside = subprocess.run(
        [sys.executable, "-m", "kubemap", "logs", "chatty", "--index", "1000"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert outside.returncode == 1
    assert "index 1000 is out of range: task chatty has indices 0..999" in outside.stderr


def test_logs_says_when_nothing_is_kept(tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    run = kubemap.submit(quiet, range(5), store=store, name="hush")
    assert run.results() == [1, 2, 3, 4, 5]
    done = cli("logs", "hush", "--index", "2", "--store", store, cwd=tmp_path)
    assert done.returncode == 1
    assert "no output of index 2 of task hush is kept" in done.stderr
    assert "KUBEMAP_KEEP_OUTPUT=0" in done.stderr


def test_the_container_wrapper_keeps_a_commands_output_and_exit_code(
    s3_store_url: str, tmp_path: Path
) -> None:
    task = open_store(s3_store_url).child("box")
    env = {
        **os.environ,
        "KUBEMAP_TASK_URL": task.url,
        "KUBEMAP_INDEX": "4",
        "KUBEMAP_COUNT": "2",
        "KUBEMAP_ATTEMPT": "1",
        "HOSTNAME": "box-4-1",
    }
    script = 'echo "out $KUBEMAP_INDEX"; echo err >&2; exit 3'
    done = subprocess.run(
        [sys.executable, "-m", "kubemap.runtime.capture", "--", "sh", "-c", script],
        capture_output=True, env=env, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 3
    assert done.stdout == b"out 4\nerr\n"  # echoed for kubectl logs (both streams: one log)
    assert list(task.list(OUTPUT_PREFIX)) == [f"{OUTPUT_PREFIX}000000000004-2-1"]
    for index in (4, 5):
        (kept,) = read_output(task, index)
        assert (kept.text, kept.attempt, kept.worker) == (b"out 4\nerr\n", 1, "box-4-1")
    assert read_output(task, 6) == []
    (timing,) = read_timings(task)  # `kubemap get` and `timeline` see container tasks too
    assert (timing.first, timing.count, timing.attempt, timing.worker) == (4, 2, 1, "box-4-1")
    assert (timing.ran, timing.succeeded, timing.failed) == (2, 0, 2)
    assert sum(timing.buckets.values()) == 2 and timing.slowest is not None
    missing = subprocess.run(
        [sys.executable, "-m", "kubemap.runtime.capture", "--", "no-such-command-here"],
        capture_output=True, env=env, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 127 and b"cannot run 'no-such-command-here'" in missing.stderr


SCRIPT = """
import sys, kubemap
def shout(x):
    print(f"line {x} of the run")
    return x
if __name__ == "__main__":
    run = kubemap.submit(shout, range(3000), store=sys.argv[1], name="echo", parallelism=4,
                         items_per_pod=50)
    assert run.results() == list(range(3000))
"""


def test_the_echo_keeps_every_line_when_workers_share_a_stdout_file(tmp_path: Path) -> None:
    """The local backend's worker processes share the terminal's stdout; redirected to a
    file, each item's echo is one write of whole lines, so workers never split each other's
    lines (block-buffered print() without capture does: a 3,000-line run split 6 here)."""
    (tmp_path / "run.py").write_text(SCRIPT)
    with (tmp_path / "out.txt").open("wb") as out:
        done = subprocess.run(
            [sys.executable, "run.py", (tmp_path / "store").as_uri()],
            stdout=out, stderr=subprocess.PIPE, cwd=tmp_path, timeout=170,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert sorted(lines) == sorted(f"line {x} of the run" for x in range(3000))
    task = open_store((tmp_path / "store").as_uri()).child("echo")
    assert len(list(task.list(OUTPUT_PREFIX))) == 60


def slow_at_7(x: int) -> int:
    time.sleep(0.3 if x == 7 else 0.002)
    return x


def test_get_and_results_verbose_name_the_slowest_indices(tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    run = kubemap.submit(
        slow_at_7, range(40), store=store, name="slowish", parallelism=2, items_per_pod=5
    )
    assert run.results() == list(range(40))
    got = cli("get", "slowish", "--store", store, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    lines = {line.split(":", 1)[0]: line for line in got.stdout.splitlines()}
    assert lines["item time"].startswith("item time:   p50 ") and ", p95 " in lines["item time"]
    slowest = lines["slowest"].removeprefix("slowest:").split(", ")
    assert slowest[0].strip().startswith("index 7 ") and len(slowest) == 5  # 8 slices, top 5
    shown = cli("results", "slowish", "--store", store, "--verbose", cwd=tmp_path)
    assert shown.returncode == 0 and lines["slowest"] in shown.stderr.splitlines()
    plain = cli("results", "slowish", "--store", store, cwd=tmp_path)
    assert "slowest:" not in plain.stderr


def test_gc_removes_a_task_with_kept_output(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(kubemap.MapTaskError):
        kubemap.map(noisy, [1, 7, 3], name="said", store=str(store), parallelism=1)
    assert list((store / "said" / OUTPUT_PREFIX.rstrip("/")).iterdir())
    done = cli("gc", "--store", str(store), "--older-than", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "removed said" in done.stdout and not (store / "said").exists()
