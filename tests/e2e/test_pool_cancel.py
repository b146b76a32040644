"""Cancelling a task on a warm pool (issue 18 #14), as a user does it: Ctrl-C on `kubemap run
--pool`. The cancel must take the task's leases back at once and the workers must stop its
function: counted through the function's own log (each call writes 'start i t' and 'end i
t'), the result objects in S3, the WorkerPool's status (busy) and a watch on the pool's pods
(the workers are stopped, not replaced). The pool's next small task then runs at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import kubemap
import pytest
from e2ekit import NAMESPACE, REPO, Operator, PodWatch, get_task, wait_for
from kubemap.api.workerpool import WorkerPool
from kubemap.stores import open_store
from kubemap.task.data import iter_results
from kubernetes import client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("kubemap_installed"),
]

SECONDS_PER_ITEM = 0.5
GRACE = 3.0  # after the cancel returns: the revoke's round trip, with room for a busy machine


def calls(log: Path, kind: str, after: float = 0.0) -> list[int]:
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return sorted(int(i) for k, i, t in lines if k == kind and float(t) > after)


def stored(store_url: str) -> list[int]:
    return sorted(i for i, _ in iter_results(open_store(store_url)))


def test_ctrl_c_on_a_pool_task_stops_its_work_and_frees_the_pool(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    wp = pool(replicas=2, idle_ttl_seconds=0)
    wait_for("2 ready workers", lambda: wp.status().ready == 2, timeout=180)
    log = tmp_path / "calls.log"
    fns = tmp_path / "fns.py"
    fns.write_text(
        "import time\n\n\n"
        "def slow(x):\n"
        f"    with open({str(log)!r}, 'a') as out:\n"
        "        out.write(f'start {x} {time.time()}\\n')\n"
        f"    time.sleep({SECONDS_PER_ITEM})\n"
        f"    with open({str(log)!r}, 'a') as out:\n"
        "        out.write(f'end {x} {time.time()}\\n')\n"
        "    return x * x\n"
    )
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("".join(f"{i}\n" for i in range(24)))  # chunks of 12 and 6: 6 s and 3 s
    name = unique("pc")
    with PodWatch(core, selector=f"kubemap.io/pool={wp.name}") as pods:
        wait_for("the watch sees both workers", lambda: len(pods.live) == 2, timeout=30)
        warm = set(pods.seen)
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubemap", "run", f"{fns}:slow", "--inputs", str(inputs),
             "--format", "jsonl", "--backend", "kubernetes", "--pool", wp.name,
             "--namespace", NAMESPACE, "--name", name, "--no-progress"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "sdk")},
        )  # fmt: skip
        try:
            wait_for("both workers running the function", lambda: len(calls(log, "start")) >= 2)
            wait_for("the pool shows both busy", lambda: wp.status().busy == 2, timeout=5)
            wait_for("a few items finished", lambda: len(calls(log, "end")) >= 2, timeout=10)
            time.sleep(0.3)  # they finished well before the Ctrl-C (the margin below)
            asked = time.time()
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        cancelled = time.time()  # the cancel has returned: the CLI has exited
        assert proc.returncode == 130, stderr
        assert "its pods are deleted" not in stderr, stderr  # there are none on a pool
        assert f"pool {wp.name}" in stderr and "stop" in stderr, stderr

        busy_zero = wait_for("the pool shows its workers idle", lambda: wp.status().busy == 0,
                             timeout=30)  # fmt: skip
        idle_after = time.time() - cancelled
        time.sleep(max(0.0, cancelled + GRACE - time.time()))
        store_url = f"{os.environ['KUBEMAP_STORE'].rstrip('/')}/{name}"
        written = stored(store_url)
        # Longer than what was left of either chunk: a worker that went on would show now.
        time.sleep(max(0.0, cancelled + 12 * SECONDS_PER_ITEM + 2 - time.time()))
        late = (
            calls(log, "start", after=cancelled + GRACE),
            calls(log, "end", after=cancelled + GRACE),
        )
        timeline = [
            f"{k} {i} {float(t) - cancelled:+.2f}s"
            for k, i, t in (line.split() for line in log.read_text().splitlines())
        ]
        # the function stopped within the grace
        assert late == ([], []), (late, timeline, (get_task(custom, name) or {}).get("status"))
        assert stored(store_url) == written  # and nothing more was written
        assert set(written) <= set(calls(log, "end"))  # only indices that had finished
        finished = set(calls(log, "end")) - set(calls(log, "end", after=asked - 0.2))
        assert finished and finished <= set(written)  # and none that had finished is lost
        body = get_task(custom, name) or {}
        assert body["status"]["phase"] == "Cancelled", body.get("status")
        assert busy_zero and idle_after < 10, idle_after

        began = time.monotonic()
        nxt = kubemap.submit(abs, [-1, -2, -3], backend="kubernetes", namespace=NAMESPACE,
                             store=os.environ.get("KUBEMAP_STORE"), pool=wp.name,
                             name=unique("pn"))  # fmt: skip
        assert nxt.results() == [1, 2, 3]
        took = time.monotonic() - began
        after = set(pods.seen)
    assert after == warm  # the workers were stopped, not replaced
    assert took < 5.0, took  # not behind the cancelled chunks (14.3 s before)
    print(
        f"\nCtrl-C -> CLI exit {cancelled - asked:.2f}s, then pool busy 0 after "
        f"{idle_after:.1f}s; {len(written)} results kept "
        f"({sorted(written)}), none after; next 3-item task {took:.2f}s; stderr: {stderr.strip()}"
    )


def test_a_function_that_will_not_stop_is_replaced_by_a_fresh_worker(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    operator: Operator,
    pool: Callable[..., WorkerPool],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """A function that swallows the stop (a bare except) or sits in C code: the worker
    process exits STOP_GRACE_SECONDS after the revoke, its container restarts, and the pool
    serves the next task; nothing of the stuck index is written."""
    wp = pool(replicas=1, idle_ttl_seconds=0)
    wait_for("1 ready worker", lambda: wp.status().ready == 1, timeout=180)
    log = tmp_path / "calls.log"

    def stubborn(x: int) -> int:
        with open(log, "a") as out:
            out.write(f"start {x} {time.time()}\n")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(BaseException):  # swallows the stop: what is tested
                time.sleep(0.1)
        return x

    def restarts() -> int:
        found = core.list_namespaced_pod(NAMESPACE, label_selector=f"kubemap.io/pool={wp.name}")
        return sum(
            cs.restart_count for p in found.items for cs in (p.status.container_statuses or [])
        )

    before = restarts()
    store = os.environ.get("KUBEMAP_STORE")
    name = unique("ps")
    run = kubemap.submit(stubborn, range(2), backend="kubernetes", namespace=NAMESPACE,
                         store=store, pool=wp.name, name=name)  # fmt: skip
    wait_for("the function started", lambda: calls(log, "start"), timeout=60)
    assert run.cancel()
    cancelled = time.monotonic()
    wait_for("the worker replaced", lambda: restarts() > before, timeout=60)
    replaced = time.monotonic() - cancelled
    wait_for("the worker ready again", lambda: wp.status().ready == 1, timeout=60)
    body = get_task(custom, name) or {}
    assert body["status"]["phase"] == "Cancelled"
    assert stored(run.store_url) == []  # the stuck index wrote nothing
    began = time.monotonic()
    nxt = kubemap.submit(abs, [-4], backend="kubernetes", namespace=NAMESPACE, store=store,
                         pool=wp.name, name=unique("pn"))  # fmt: skip
    assert nxt.results() == [4]
    print(f"\nstuck function: worker replaced {replaced:.1f}s after the cancel; next task "
          f"{time.monotonic() - began:.2f}s")  # fmt: skip
