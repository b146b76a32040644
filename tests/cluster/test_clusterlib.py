"""The test cluster's process and certificate handling, with no cluster: ``down`` must leave no
process behind whatever a component did to its children, and never signal a stranger.

    .venv/bin/pytest tests/cluster/test_clusterlib.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterlib import procs


def _wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {timeout:.0f}s")
        time.sleep(0.1)


# --- stopping by PID leaves nothing behind (no cluster needed) ----------------------------------

# A component that ignores SIGTERM, with a child in its group and a grandchild in a session of its
# own (as a pod started by the node emulator would be); both carry the cluster's marker.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print("started", flush=True)
time.sleep(600)
"""


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    cluster_id = uuid.uuid4().hex
    env = {**os.environ, procs.MARKER_ENV: cluster_id}
    log = tmp_path / "stubborn.log"
    proc = procs.spawn("node-emulator", [sys.executable, "-c", STUBBORN], log, env, tmp_path)
    _wait_until("children started", lambda: "started" in log.read_text(), 20)
    family = procs.members(proc, cluster_id)
    assert len(family) == 3, family
    left = procs.stop(proc, cluster_id, grace=1.0)
    assert left == set()
    assert not any(
        procs.is_alive(pid, start) for pid in family if (start := procs.start_time(pid)) is not None
    )
    assert procs.marked(cluster_id) == set()


def test_stop_never_signals_a_reused_pid(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        started = procs.start_time(sleeper.pid)
        assert started is not None
        impostor = procs.Proc(
            name="etcd", pid=sleeper.pid, start_time=started + 1, log=str(tmp_path / "x")
        )
        assert procs.stop(impostor, uuid.uuid4().hex, grace=0.5) == set()
        assert sleeper.poll() is None, "stop() signalled a process it did not start"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_free_ports_are_distinct() -> None:
    ports = procs.free_ports(12)
    assert len(set(ports)) == 12


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_pki_identities(tmp_path: Path) -> None:
    from clusterlib.pki import make_pki

    pki = make_pki(tmp_path)

    def text(cert: Path) -> str:
        return subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-noout", "-text"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert "O = system:masters" in text(pki.admin.cert)
    assert "CN = system:kube-controller-manager" in text(pki.controller_manager.cert)
    assert "IP Address:127.0.0.1" in text(pki.apiserver.cert)
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca.cert), str(pki.admin.cert)],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
