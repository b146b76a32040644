"""Time to admission: a MapTask whose pods Kueue admits, beside the same MapTask without a queue.

    eval "$(tests/cluster/testcluster env)"      # a cluster started with `up --kueue`
    .venv/bin/python bench/kueue_admission.py [--pods 4] [--rounds 5]

Each round creates the same container-mode MapTask twice (a shell `sleep` per index, 500m
each, `--pods` pods, all of which fit the queue's quota): once plain, once with spec.queueName
naming a LocalQueue of a fresh ClusterQueue (2 CPUs, tests/cluster/kueuekit.py). A pod watch
measures, from the MapTask's create, the first pod running (time to admission) and the last
one running (the whole first wave admitted). With a queue each pod is created gated, gets a
Workload, is admitted by Kueue's scheduler, ungated, then bound: the ratio is what that costs.

On the test cluster pods are processes run by the node emulator, so the numbers measure the
controllers (operator, Kueue, scheduler), not container start-up. Timings on a shared 2-core
machine are noisy: read the medians' ratio, not the seconds. Exits 0 unless something broke.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))
import kueuekit

NAMESPACE = os.environ.get("BENCH_NAMESPACE", "default")
TIMEOUT = 300.0


class StartWatch:
    """When each pod of a selector was first seen started (Running or finished)."""

    def __init__(self, core: client.CoreV1Api, selector: str) -> None:
        self.core, self.selector = core, selector
        self.started: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.3)  # the watch is open before the task exists

    def _run(self) -> None:
        w = watch.Watch()
        while not self._stop.is_set():
            try:
                for event in w.stream(
                    self.core.list_namespaced_pod,
                    NAMESPACE,
                    label_selector=self.selector,
                    timeout_seconds=5,
                ):
                    pod = event["object"]
                    if pod.status.phase in ("Running", "Succeeded", "Failed"):
                        self.started.setdefault(pod.metadata.name, time.monotonic())
                    if self._stop.is_set():
                        w.stop()
                        break
            except Exception:  # a dropped watch: open it again
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def maptask(name: str, pods: int, queue: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "mode": "Container",
        "count": pods,
        "parallelism": pods,
        "template": {
            "image": "busybox",
            "command": ["sh", "-c", "sleep 2"],
            "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}},
        },
        "ttlSecondsAfterFinished": 5,
    }
    if queue:
        spec["queueName"] = queue
    return {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": name},
        "spec": spec,
    }


def one_run(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, pods: int, queue: str | None
) -> tuple[float, float]:
    """(seconds to the first pod running, seconds to the last one running) from the create."""
    name = f"bench-adm-{uuid.uuid4().hex[:6]}"
    seen = StartWatch(core, f"kubemap.io/task={name}")
    created = time.monotonic()
    custom.create_namespaced_custom_object(
        "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", maptask(name, pods, queue)
    )
    try:
        while len(seen.started) < pods:
            if time.monotonic() - created > TIMEOUT:
                raise TimeoutError(f"{name}: {len(seen.started)} of {pods} pods started")
            time.sleep(0.05)
        times = sorted(seen.started.values())
        return times[0] - created, times[-1] - created
    finally:
        seen.stop()
        while True:  # the next round starts on an empty quota
            body = custom.get_namespaced_custom_object(
                "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name
            )
            if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(0.2)
        custom.delete_namespaced_custom_object(
            "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=4, help="pods per task (4 fit the quota)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not os.environ.get("KUBECONFIG"):
        print('set KUBECONFIG (e.g. eval "$(tests/cluster/testcluster env)")', file=sys.stderr)
        return 2
    config.load_kube_config()
    api = client.ApiClient()
    missing = kueuekit.kueue_missing(api)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    local = f"bench-{uuid.uuid4().hex[:6]}"
    queue = kueuekit.create_queue(api, NAMESPACE, cpu="2", local_queue=local)
    plain: list[tuple[float, float]] = []
    queued: list[tuple[float, float]] = []
    try:
        for _ in range(args.rounds):  # alternate, so that the machine's noise hits both
            plain.append(one_run(core, custom, args.pods, None))
            queued.append(one_run(core, custom, args.pods, local))
    finally:
        custom.delete_namespaced_custom_object(
            kueuekit.GROUP, kueuekit.VERSION, NAMESPACE, "localqueues", local
        )
        kueuekit.delete_queue(api, queue)

    def median(rows: list[tuple[float, float]], i: int) -> float:
        return statistics.median(r[i] for r in rows)

    print(
        f"\n{args.pods} pods of 500m (all fit the 2-CPU quota), {args.rounds} rounds, "
        f"on {os.environ['KUBECONFIG']}"
    )
    header = f"{'task':<22}{'first pod running s':>21}{'all running s':>15}"
    print(header)
    print("-" * len(header))
    for label, rows in (("plain", plain), (f"queue {local}", queued)):
        print(f"{label:<22}{median(rows, 0):>21.2f}{median(rows, 1):>15.2f}")
    first = median(queued, 0) / median(plain, 0) if median(plain, 0) else float("nan")
    last = median(queued, 1) / median(plain, 1) if median(plain, 1) else float("nan")
    print(f"time to admission, Kueue/plain: {first:.2f}x (first pod), {last:.2f}x (all pods)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
