"""Scale envelope of kubemap on the test cluster: how big a task gets, and what it costs.

    eval "$(tests/cluster/testcluster env)"
    .venv/bin/python bench/scale.py                 # 100,000 items batched, 1,000,000 in large chunks
    .venv/bin/python bench/scale.py --smoke         # 2,000 items: the CI check that it all works
    .venv/bin/python bench/scale.py --items 100000 --items-per-pod 1000

For each run it prints: submit time and the SDK's peak memory (ru_maxrss of this process,
which does nothing else), the MapTask object's largest size while it ran (polled), the
operator's peak memory (VmHWM of its process) and CPU seconds spent during the run (utime +
stime from /proc), API requests per 1,000 items (the API server's apiserver_request_total,
every client counted: operator, node emulator, controllers, this script), wall time from
submit to Succeeded, and the time to collect every result. Targets (issue 12): object under
64 KiB, operator under 150 MB, 1,000,000 items submitted in under 30 s with under 500 MB of
SDK memory. Exits non-zero if a run fails, a result is wrong, or (with --check) a target is
missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import kubemap
from kubernetes import client, config

OPERATOR_NAMESPACE = "kubemap-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=kubemap,app.kubernetes.io/component=operator"
NAMESPACE = os.environ.get("BENCH_NAMESPACE", "default")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    items: int
    items_per_pod: int
    submit_s: float
    sdk_peak_mb: float
    object_max_kib: float
    operator_peak_mb: float
    operator_cpu_s: float
    api_requests_per_1000: float
    wall_s: float
    collect_s: float


def metrics_text(api: client.ApiClient) -> str:
    response = api.call_api(
        "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False
    )
    raw = response[0] if isinstance(response, tuple) else response
    return str(raw.data.decode())


def operator_pid(core: client.CoreV1Api) -> int:
    for pod in core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=OPERATOR_SELECTOR).items:
        for cs in pod.status.container_statuses or []:
            if cs.state.running is not None and (cs.container_id or "").startswith("emulator://"):
                return int(cs.container_id.removeprefix("emulator://"))
    raise RuntimeError("no running operator pod on the test cluster's node emulator")


def cpu_seconds(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def api_requests(api: client.ApiClient) -> float:
    text = metrics_text(api)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apiserver_request_total{")
    )


class ObjectSize:
    """Polls the MapTask and keeps the largest size of its JSON."""

    def __init__(self, custom: client.CustomObjectsApi, name: str) -> None:
        self.custom, self.name, self.largest = custom, name, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                body = self.custom.get_namespaced_custom_object(
                    "kubemap.io", "v1alpha1", NAMESPACE, "maptasks", self.name
                )
                self.largest = max(self.largest, len(json.dumps(body)))
            except Exception:
                pass
            self._stop.wait(0.5)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.largest


def plus_one(x: int) -> int:
    return x + 1


def one_run(items: int, per_pod: int, parallelism: int) -> Row:
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    pid = operator_pid(core)
    cpu0, requests0 = cpu_seconds(pid), api_requests(api)
    name = f"scale-{uuid.uuid4().hex[:6]}"
    t0 = time.perf_counter()
    run = kubemap.submit(
        plus_one,
        range(items),
        backend="kubernetes",
        namespace=NAMESPACE,
        store=os.environ.get("KUBEMAP_STORE"),
        name=name,
        items_per_pod=per_pod,
        parallelism=parallelism,
    )
    submit_s = time.perf_counter() - t0
    sdk_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = ObjectSize(custom, name)
    status = run.wait(timeout=3600)
    wall = time.perf_counter() - t0
    largest = size.stop()
    if status.phase.value != "Succeeded":
        raise SystemExit(f"{name}: {status.phase.value}: {status}")
    if operator_pid(core) != pid:
        raise SystemExit(f"{name}: the operator restarted during the run; figures are void")
    cpu, requests = cpu_seconds(pid) - cpu0, api_requests(api) - requests0
    t1 = time.perf_counter()
    results = run.results()
    collect = time.perf_counter() - t1
    if len(results) != items or results[0] != 1 or results[-1] != items:
        raise SystemExit(f"{name}: wrong results ({len(results)} values)")
    del results
    custom.delete_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name)
    return Row(
        items=items,
        items_per_pod=per_pod,
        submit_s=round(submit_s, 2),
        sdk_peak_mb=round(sdk_peak, 1),
        object_max_kib=round(largest / 1024, 1),
        operator_peak_mb=round(peak_rss_mb(pid), 1),
        operator_cpu_s=round(cpu, 1),
        api_requests_per_1000=round(requests * 1000 / items, 2),
        wall_s=round(wall, 1),
        collect_s=round(collect, 2),
    )


def misses(row: Row) -> list[str]:
    out = []
    if row.object_max_kib >= 64:
        out.append(f"MapTask object {row.object_max_kib} KiB (target < 64)")
    if row.operator_peak_mb >= 150:
        out.append(f"operator peak {row.operator_peak_mb} MB (target < 150)")
    if row.items >= 1_000_000 and row.submit_s >= 30:
        out.append(f"submit of {row.items} items took {row.submit_s} s (target < 30)")
    if row.items >= 1_000_000 and row.sdk_peak_mb >= 500:
        out.append(f"SDK peak {row.sdk_peak_mb} MB (target < 500)")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="one 2,000-item run (CI)")
    parser.add_argument("--items", type=int, help="one run of this many items")
    parser.add_argument("--items-per-pod", type=int, default=1000)
    parser.add_argument("--parallelism", type=int, default=20)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    config.load_kube_config()
    if args.smoke:
        plan = [(2000, 200)]
    elif args.items:
        plan = [(args.items, args.items_per_pod)]
    else:
        plan = [(100_000, 1000), (1_000_000, 20_000)]
    rows = [one_run(items, per_pod, args.parallelism) for items, per_pod in plan]
    fields = list(Row.__dataclass_fields__)
    print(" | ".join(fields))
    for row in rows:
        print(" | ".join(str(getattr(row, f)) for f in fields))
    missed = [m for row in rows for m in misses(row)]
    for m in missed:
        print(f"target missed: {m}")
    return 1 if (missed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
