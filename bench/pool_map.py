"""Warm pools against pods, on one cluster, in one run: where does the time go?

    eval "$(tests/cluster/testcluster env)"      # or any KUBECONFIG with kubemap installed
    .venv/bin/python bench/pool_map.py [--items 10000] [--workers 8] [--small 1000] [--tiny 100000]
    .venv/bin/python bench/pool_map.py --idle-cpu 60 --workers 4   # idle workers' CPU only

Rows (the same 10 ms sleep per item unless said otherwise):
  warm pool        second task on a pool whose workers are already up
  cold pool        the task creates its pool (pool=<new name>): worker start-up included
  batched MapTask  no pool: pods with the SDK's automatic itemsPerPod
  at --small items: the warm pool, one pod per index (items_per_pod=1), an Indexed Job
  --tiny items of x -> 2*x on a warm pool of 4 workers, submit to results in hand
Columns: wall time from submit to results in hand, pods created (a watch), Kubernetes API
writes during the run (the API server's own apiserver_request_total, POST/PUT/PATCH/DELETE,
leases and node heartbeats left out), and the ratio to the ideal (items x 10 ms / workers).
On the test cluster pods are processes, so pod start-up is cheaper than on a real cluster:
the gaps shown here are a lower bound. Read the ratios, not the seconds (2 shared cores).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubemap
from kubemap.api.workerpool import WorkerPool
from kubernetes import client, config, watch

NAMESPACE = os.environ.get("BENCH_NAMESPACE", "default")
ITEM_SECONDS = 0.01
NOT_WRITES = {"leases", "nodes", "tokenreviews", "subjectaccessreviews"}
METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


@dataclass
class Row:
    name: str
    items: int
    workers: int
    seconds: float
    pods: int
    writes: int
    ok: bool

    @property
    def ideal(self) -> float:
        return self.items * ITEM_SECONDS / self.workers


def api_writes(api: client.ApiClient) -> int:
    """Writes the API server has served so far (all clients), from its /metrics."""
    response = api.call_api(
        "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False
    )
    total = 0
    for line in response.data.decode().splitlines():
        match = METRIC.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("verb") in ("POST", "PUT", "PATCH", "DELETE", "APPLY") and (
            labels.get("resource") not in NOT_WRITES
        ):
            total += int(float(match["value"]))
    return total


class PodsCreated:
    """Pods matching a selector that appear after the watch started."""

    def __init__(self, core: client.CoreV1Api, selector: str) -> None:
        self.seen: set[str] = set()
        self.before = {
            p.metadata.name
            for p in core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(core, selector), daemon=True)
        self._thread.start()

    def _run(self, core: client.CoreV1Api, selector: str) -> None:
        w = watch.Watch()
        while not self._stop.is_set():
            try:
                for event in w.stream(
                    core.list_namespaced_pod, NAMESPACE, label_selector=selector, timeout_seconds=5
                ):
                    self.seen.add(event["object"].metadata.name)
                    if self._stop.is_set():
                        w.stop()
                        break
            except Exception:
                time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return len(self.seen - self.before)


def sleepy(x: int) -> int:
    time.sleep(ITEM_SECONDS)
    return x


def double(x: int) -> int:
    return 2 * x


def opts(**kw: Any) -> dict[str, Any]:
    return {
        "backend": "kubernetes",
        "namespace": NAMESPACE,
        "store": os.environ.get("KUBEMAP_STORE"),
        **kw,
    }


def measure(
    api: client.ApiClient,
    core: client.CoreV1Api,
    name: str,
    items: int,
    workers: int,
    selector: str,
    run: Callable[[], bool],
) -> Row:
    pods = PodsCreated(core, selector)
    writes = api_writes(api)
    started = time.perf_counter()
    ok = run()
    seconds = time.perf_counter() - started
    time.sleep(1.0)  # let the watch catch the last pod events
    row = Row(name, items, workers, seconds, pods.stop(), api_writes(api) - writes, ok)
    print(
        f"  {row.name}: {row.seconds:.1f}s, {row.pods} pods, {row.writes} writes", file=sys.stderr
    )
    return row


def sdk_map(fn: Callable[[int], int], items: int, **kw: Any) -> Callable[[], bool]:
    def run() -> bool:
        return bool(
            kubemap.map(fn, range(items), **opts(**kw))
            == [fn(i) if fn is double else i for i in range(items)]
        )

    return run


def warm(name: str, replicas: int) -> WorkerPool:
    wp = WorkerPool(name, namespace=NAMESPACE, replicas=replicas, idle_ttl_seconds=0).create()
    deadline = time.monotonic() + 300
    while wp.status().ready < replicas:
        if time.monotonic() > deadline:
            raise SystemExit(f"pool {name} did not get {replicas} ready workers in 300 s")
        time.sleep(0.5)
    kubemap.map(sleepy, range(replicas * 4), **opts(pool=name))  # first task: load, warm up
    return wp


def indexed_job(batch: client.BatchV1Api, items: int, parallelism: int) -> Callable[[], bool]:
    name = f"bench-job-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"bench": name}},
        "spec": {
            "completionMode": "Indexed",
            "completions": items,
            "parallelism": parallelism,
            "template": {
                "metadata": {"labels": {"bench": "indexed-job"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": "python:3.11-slim",
                         "command": ["python", "-c", f"import time; time.sleep({ITEM_SECONDS})"]}
                    ],
                },
            },
        },
    }  # fmt: skip

    def run() -> bool:
        batch.create_namespaced_job(NAMESPACE, body)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            job = batch.read_namespaced_job(name, NAMESPACE)
            conds = {c.type: c.status for c in (job.status.conditions or [])}
            if conds.get("Complete") == "True" or conds.get("Failed") == "True":
                batch.delete_namespaced_job(name, NAMESPACE, propagation_policy="Background")
                return conds.get("Complete") == "True"
            time.sleep(0.3)
        return False

    return run


def idle_cpu(core: client.CoreV1Api, replicas: int, seconds: float) -> int:
    """CPU of idle warm workers: utime+stime from /proc over `seconds` of no work.

    Needs pods that are local processes (the test cluster's node emulator: containerID
    emulator://<pid>); on a real node read the container's cgroup cpu.stat instead."""
    name = f"bench-idle-{uuid.uuid4().hex[:4]}"
    wp = warm(name, replicas)
    try:
        time.sleep(5)  # the warm-up task's last report and lease are over
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"kubemap.io/pool={name}")
        pids = []
        for pod in pods.items:
            for cs in pod.status.container_statuses or []:
                if (cs.container_id or "").startswith("emulator://"):
                    pids.append(int(cs.container_id.removeprefix("emulator://")))
        if not pids:
            raise SystemExit("no worker pids: --idle-cpu needs the test cluster's node emulator")
        tick = os.sysconf("SC_CLK_TCK")

        def cpu(pid: int) -> float:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

        before = {pid: cpu(pid) for pid in pids}
        started = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - started
        for pid in pids:
            used = cpu(pid) - before[pid]
            print(
                f"idle worker pid {pid}: {used:.2f} s CPU in {wall:.0f} s = "
                f"{100 * used / wall:.2f} % of a core (target < 1 %)"
            )
    finally:
        wp.delete()
    return 0


def table(rows: list[Row]) -> str:
    lines = [
        "| run | items | workers | wall (s) | ideal (s) | x ideal | pods created | API writes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = "" if r.ok else " (FAILED)"
        lines.append(
            f"| {r.name}{mark} | {r.items:,} | {r.workers} | {r.seconds:.1f} | {r.ideal:.1f} | "
            f"{r.seconds / r.ideal:.2f} | {r.pods} | {r.writes} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument(
        "--pod-items", type=int, default=None,
        help="items for one pod per index and the Indexed Job (default: --small); on a loaded "
        "machine they take minutes per hundred items",
    )  # fmt: skip
    parser.add_argument("--tiny", type=int, default=100_000)
    parser.add_argument("--skip-fast", action="store_true", help="leave out the --items rows")
    parser.add_argument(
        "--skip-slow", action="store_true", help="leave out one pod per index and the Indexed Job"
    )
    parser.add_argument(
        "--idle-cpu", type=float, default=None, metavar="SECONDS",
        help="only measure the CPU of idle warm workers over SECONDS (test cluster)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    config.load_kube_config()
    api = client.ApiClient()
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    if args.idle_cpu is not None:
        return idle_cpu(core, args.workers, args.idle_cpu)
    tag = uuid.uuid4().hex[:4]
    n, w = args.items, args.workers
    pools: list[WorkerPool] = []
    rows: list[Row] = []
    try:
        hot = f"bench-warm-{tag}"
        pools.append(warm(hot, w))
        sel = f"kubemap.io/pool={hot}"
        s = args.small
        if not args.skip_fast:
            rows.append(measure(api, core, "warm pool", n, w, sel, sdk_map(sleepy, n, pool=hot)))
            cold = f"bench-cold-{tag}"
            rows.append(
                measure(api, core, "cold pool (created by the task)", n, w, f"kubemap.io/pool={cold}",
                        sdk_map(sleepy, n, pool=cold, parallelism=w))
            )  # fmt: skip
            pools.append(WorkerPool(cold, namespace=NAMESPACE))
            rows.append(
                measure(api, core, "MapTask, SDK itemsPerPod", n, w, "kubemap.io/task",
                        sdk_map(sleepy, n, parallelism=w))
            )  # fmt: skip
            rows.append(measure(api, core, "warm pool", s, w, sel, sdk_map(sleepy, s, pool=hot)))
        if not args.skip_slow:
            p = args.pod_items or s
            if p != s or args.skip_fast:
                rows.append(
                    measure(api, core, "warm pool", p, w, sel, sdk_map(sleepy, p, pool=hot))
                )
            rows.append(
                measure(api, core, "MapTask, one pod per index", p, w, "kubemap.io/task",
                        sdk_map(sleepy, p, parallelism=w, items_per_pod=1))
            )  # fmt: skip
            rows.append(
                measure(api, core, "Indexed Job", p, w, "bench=indexed-job", indexed_job(batch, p, w))
            )  # fmt: skip
        tiny = f"bench-tiny-{tag}"
        pools.append(warm(tiny, 4))
        t = args.tiny
        row = measure(
            api,
            core,
            "warm pool, x -> 2*x",
            t,
            4,
            f"kubemap.io/pool={tiny}",
            sdk_map(double, t, pool=tiny),
        )
        rows.append(row)
    finally:
        for wp in pools:
            try:
                wp.delete()
            except Exception as exc:  # report, keep the table
                print(f"could not delete pool {wp.name}: {exc}", file=sys.stderr)
    print(table(rows))
    by = {(r.name, r.items): r for r in rows}
    print()
    if ("warm pool", n) in by:
        hot, batched = by[("warm pool", n)], by[("MapTask, SDK itemsPerPod", n)]
        print(
            f"warm pool at {n:,}: {hot.pods} pods, {hot.writes} API writes, "
            f"{hot.seconds / hot.ideal:.2f}x ideal (targets: 0 pods, < 50 writes, <= 1.3x)"
        )
        ratio = batched.seconds / hot.seconds
        print(f"batched MapTask / warm pool at {n:,}: {ratio:.1f}x (target >= 2x)")
    p = args.pod_items or args.small
    if ("MapTask, one pod per index", p) in by:
        ratio = by[("MapTask, one pod per index", p)].seconds / by[("warm pool", p)].seconds
        print(f"one pod per index / warm pool at {p:,}: {ratio:.1f}x (target >= 10x)")
    tiny = rows[-1]
    print(f"{tiny.items:,} tiny items on 4 warm workers: {tiny.seconds:.1f}s (target < 15 s)")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
