"""kubemap's MapTask against Kubernetes' own Indexed Job, on the same cluster, in one run.

    eval "$(tests/cluster/testcluster env)"      # or any KUBECONFIG with kubemap installed
    .venv/bin/python bench/cluster_map.py [--items 100] [--parallelism 10] [--flaky 0.2]

Both run the same container-mode work (a shell command per index) with the same
parallelism; the table shows wall time from create to done, the peak number of running
pods seen by a watch (the concurrency cap), pods created, and the size of the final object
in etcd. A second round makes a share of the indices fail once, to compare per-index
retries (Indexed Job `backoffLimitPerIndex` vs MapTask `backoffLimitPerIndex`).

On the test cluster pods are processes run by the node emulator, so the numbers measure the
controllers (API calls, reconcile latency), not container start-up. Timings on a shared
2-core machine are noisy: read the ratios, not the seconds. Exits 0 unless something broke.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config, watch

NAMESPACE = os.environ.get("BENCH_NAMESPACE", "default")


@dataclass
class Outcome:
    name: str
    seconds: float
    peak_running: int
    pods_created: int
    object_bytes: int
    done: bool


class PodCounter:
    """Watches pods with a label selector; tracks the peak of non-terminal pods."""

    def __init__(self, core: client.CoreV1Api, selector: str) -> None:
        self.core, self.selector = core, selector
        self.live: set[str] = set()
        self.seen: set[str] = set()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

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
                    name = pod.metadata.name
                    self.seen.add(name)
                    terminal = pod.status.phase in ("Succeeded", "Failed")
                    if event["type"] == "DELETED" or terminal:
                        self.live.discard(name)
                    else:
                        self.live.add(name)
                    self.peak = max(self.peak, len(self.live))
                    if self._stop.is_set():
                        w.stop()
                        break
            except Exception:  # a dropped watch: list again
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def flaky_command(marker_dir: str, index_var: str, flaky: float) -> list[str]:
    """Indices below flaky*100 % (by index mod 100) fail on their first attempt only."""
    threshold = int(flaky * 100)
    script = (
        f"i=${index_var}; m={marker_dir}/$i; "
        f'if [ $((i % 100)) -lt {threshold} ] && [ ! -e "$m" ]; then : > "$m"; exit 1; fi; exit 0'
    )
    return ["sh", "-c", script]


def poll(read: Callable[[], Any], verdict: Callable[[Any], bool | None]) -> tuple[Any, bool]:
    """Read the object until verdict() says True (done) or False (failed); 600 s at most."""
    deadline = time.perf_counter() + 600
    obj = read()
    while time.perf_counter() < deadline:
        outcome = verdict(obj)
        if outcome is not None:
            return obj, outcome
        time.sleep(0.2)
        obj = read()
    return obj, False


def run_indexed_job(
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    items: int,
    parallelism: int,
    command: list[str],
) -> Outcome:
    name = f"bench-job-{uuid.uuid4().hex[:6]}"
    counter = PodCounter(core, f"batch.kubernetes.io/job-name={name}")
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": items,
            "parallelism": parallelism,
            "backoffLimitPerIndex": 2,
            "maxFailedIndexes": items,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox", "command": command}],
                }
            },
        },
    }

    def verdict(job: Any) -> bool | None:
        conds = {c.type: c.status for c in (job.status.conditions or [])}
        if conds.get("Complete") == "True" or conds.get("Failed") == "True":
            return conds.get("Complete") == "True"
        return None

    started = time.perf_counter()
    batch.create_namespaced_job(NAMESPACE, body)
    job, done = poll(lambda: batch.read_namespaced_job(name, NAMESPACE), verdict)
    elapsed = time.perf_counter() - started
    counter.stop()
    size = len(json.dumps(client.ApiClient().sanitize_for_serialization(job)))
    batch.delete_namespaced_job(name, NAMESPACE, propagation_policy="Background")
    return Outcome("Indexed Job", elapsed, counter.peak, len(counter.seen), size, done)


def run_maptask(
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    items: int,
    parallelism: int,
    command: list[str],
) -> Outcome:
    name = f"bench-mt-{uuid.uuid4().hex[:6]}"
    counter = PodCounter(core, f"kubemap.io/task={name}")
    body = {
        "apiVersion": "kubemap.io/v1alpha1",
        "kind": "MapTask",
        "metadata": {"name": name},
        "spec": {
            "mode": "Container",
            "count": items,
            "parallelism": parallelism,
            "backoffLimitPerIndex": 2,
            "minSuccessRatio": 0.0,
            "template": {"image": "busybox", "command": command},
        },
    }

    def verdict(task: dict[str, Any]) -> bool | None:
        phase = (task.get("status") or {}).get("phase")
        return phase == "Succeeded" if phase in ("Succeeded", "Failed", "Cancelled") else None

    started = time.perf_counter()
    custom.create_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "maptasks", body)
    task, done = poll(
        lambda: custom.get_namespaced_custom_object(
            "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name
        ),
        verdict,
    )
    elapsed = time.perf_counter() - started
    counter.stop()
    size = len(json.dumps(task))
    custom.delete_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name)
    return Outcome("MapTask", elapsed, counter.peak, len(counter.seen), size, done)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--parallelism", type=int, default=10)
    parser.add_argument("--flaky", type=float, default=0.2, help="share of indices failing once")
    args = parser.parse_args(argv)
    if not os.environ.get("KUBECONFIG"):
        print('set KUBECONFIG (e.g. eval "$(tests/cluster/testcluster env)")', file=sys.stderr)
        return 2
    config.load_kube_config()
    core, batch, custom = client.CoreV1Api(), client.BatchV1Api(), client.CustomObjectsApi()

    rounds: list[tuple[str, Outcome, Outcome]] = []
    with tempfile.TemporaryDirectory(prefix="kubemap-bench-") as markers:
        for label, flaky in (("all succeed", 0.0), (f"{args.flaky:.0%} fail once", args.flaky)):
            job_dir = os.path.join(markers, f"job-{flaky}")
            mt_dir = os.path.join(markers, f"mt-{flaky}")
            os.makedirs(job_dir)
            os.makedirs(mt_dir)
            job = run_indexed_job(
                batch,
                core,
                args.items,
                args.parallelism,
                flaky_command(job_dir, "JOB_COMPLETION_INDEX", flaky),
            )
            task = run_maptask(
                custom,
                core,
                args.items,
                args.parallelism,
                flaky_command(mt_dir, "KUBEMAP_INDEX", flaky),
            )
            rounds.append((label, job, task))

    print(f"\n{args.items} indices, parallelism {args.parallelism}, on {os.environ['KUBECONFIG']}")
    header = f"{'round':<16}{'runner':<13}{'done':>6}{'seconds':>9}{'peak pods':>11}{'pods':>6}{'object B':>10}"
    print(header)
    print("-" * len(header))
    for label, job, task in rounds:
        for outcome in (job, task):
            print(
                f"{label:<16}{outcome.name:<13}{'yes' if outcome.done else 'NO':>6}"
                f"{outcome.seconds:>9.1f}{outcome.peak_running:>11}{outcome.pods_created:>6}"
                f"{outcome.object_bytes:>10}"
            )
        ratio = task.seconds / job.seconds if job.seconds else float("nan")
        cap_ok = task.peak_running <= args.parallelism
        print(
            f"{'':<16}MapTask/Job time ratio {ratio:.2f}x; MapTask cap "
            f"{'held' if cap_ok else 'EXCEEDED'} ({task.peak_running} <= {args.parallelism})"
        )
    broken = any(not (job.done and task.done) for _, job, task in rounds)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
