"""Command line and wiring: node agent, scheduler, kubelet, and a clean SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .api import Api, Reflector, cluster_info, retrying
from .containers import Backoff
from .events import EventRecorder
from .kubelet import Kubelet
from .launch import Context
from .node import NodeAgent, NodeConfig, node_object
from .processes import ProcessRegistry, kill_leftovers
from .scheduler import NodeUsage, Scheduler

log = logging.getLogger("kubelet_emu")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="node_emulator.py",
        description="Emulate one Kubernetes node (scheduler + kubelet) that runs pods' commands as local processes.",
    )
    p.add_argument(
        "--kubeconfig", required=True, type=Path, help="admin kubeconfig of the test cluster"
    )
    p.add_argument("--node-name", default="kubemap-node")
    p.add_argument(
        "--state-dir", required=True, type=Path, help="pod directories and logs go under DIR/pods/"
    )
    p.add_argument(
        "--apiserver-url",
        default=None,
        help="override the server URL of the kubeconfig (also for pods)",
    )
    p.add_argument("--cpu", default="2", help="node capacity: cpu (default 2)")
    p.add_argument("--memory", default="24Gi", help="node capacity: memory (default 24Gi)")
    p.add_argument("--pods", default="200", help="node capacity: pods (default 200)")
    p.add_argument(
        "--kubelet-port",
        type=int,
        default=0,
        help="port of the node's kubelet endpoint on 127.0.0.1 (kubeletstream, which serves "
        "logs and port-forward), published in the Node's status; 0: none",
    )
    p.add_argument(
        "--restart-backoff",
        type=float,
        default=1.0,
        help="first crash-loop back-off in seconds (kubelet: 10)",
    )
    p.add_argument(
        "--max-restart-backoff",
        type=float,
        default=60.0,
        help="back-off cap in seconds (kubelet: 300)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL of pods on exit",
    )
    p.add_argument(
        "--no-scheduler",
        action="store_true",
        help="only run the kubelet part (another scheduler binds)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def setup_logging(verbose: bool) -> None:
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    for noisy in ("urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    if not args.kubeconfig.is_file():
        log.error(
            "kubeconfig %s does not exist: pass the admin kubeconfig written by `testcluster up`",
            args.kubeconfig,
        )
        return 2
    pods_dir = (args.state_dir / "pods").resolve()
    pods_dir.mkdir(parents=True, exist_ok=True)
    if killed := kill_leftovers(pods_dir):
        log.warning("killed %d process groups left by an earlier emulator", killed)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    api = Api(args.kubeconfig, args.apiserver_url)
    node_cfg = NodeConfig(
        name=args.node_name,
        cpu=args.cpu,
        memory=args.memory,
        pods=args.pods,
        kubelet_port=args.kubelet_port,
    )
    agent = NodeAgent(api, node_cfg)
    while True:
        try:
            retrying("registering the node", agent.register, attempts=3)
            break
        except Exception as exc:
            log.warning("cannot register node %s yet: %s", args.node_name, exc)
            if stop.wait(2.0):
                return 0
    agent.start()

    registry = ProcessRegistry()
    venv_bin = str(Path(sys.executable).parent)
    ctx = Context(
        api=api,
        cluster=cluster_info(args.kubeconfig, args.apiserver_url),
        node_name=args.node_name,
        host_ip=node_cfg.host_ip,
        allocatable=node_cfg.allocatable,
        pods_dir=pods_dir,
        registry=registry,
        backoff=Backoff(args.restart_backoff, args.max_restart_backoff),
        events=EventRecorder(api, args.node_name),
        stopping=stop,
        base_path=os.pathsep.join(
            [venv_bin, os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]
        ),
    )
    usage = NodeUsage()
    kubelet = Kubelet(ctx, usage)
    kubelet_watch = Reflector(
        api, "/api/v1/pods", f"spec.nodeName={args.node_name}", kubelet, "kubelet-watch"
    )
    kubelet_watch.start()
    while not kubelet_watch.synced.wait(0.5):
        if stop.is_set():
            break
    if not args.no_scheduler and not stop.is_set():
        labels = node_object(node_cfg)["metadata"]["labels"]
        scheduler = Scheduler(api, args.node_name, node_cfg.allocatable, labels, usage, ctx.events)
        Reflector(api, "/api/v1/pods", "spec.nodeName=", scheduler, "scheduler-watch").start()
        scheduler.thread.start()
    log.info("node %s is up; pod directories under %s", args.node_name, pods_dir)

    while not stop.wait(1.0):
        pass
    count = registry.shutdown(args.shutdown_grace)
    log.info("stopped %d container processes; exiting", count)
    logging.shutdown()
    return 0
