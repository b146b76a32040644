"""What every fault scenario checks when its task is done, and the watch that counts pods.

The promise under test is the Indexed Job's: the task ends Succeeded, every index is counted
exactly once, the store holds exactly one result object covering each index, and no pod is
left running or holding the tracking finalizer. Retries are counted from the pods themselves
(the kubemap.io/attempt annotation), so "replaced without spending a retry" is a count too.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import boto3
from kubemap.contract import ANNOTATION_ATTEMPT, POD_FINALIZER, parse_result_key
from kubemap.core.attempts import Report
from kubernetes import client, watch

NAMESPACE = os.environ.get("KUBEMAP_E2E_NAMESPACE", "default")


def s3_client() -> Any:
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])


def get_task(custom: client.CustomObjectsApi, name: str) -> dict[str, Any]:
    return dict(
        custom.get_namespaced_custom_object("kubemap.io", "v1alpha1", NAMESPACE, "maptasks", name)
    )


def task_pods(core: client.CoreV1Api, name: str) -> list[Any]:
    return list(core.list_namespaced_pod(NAMESPACE, label_selector=f"kubemap.io/task={name}").items)


class PodLedger:
    """Every pod of one task seen by a watch from before the task exists: its attempt and
    whether it ever ran. Re-lists on a broken watch (the API server may be restarted)."""

    def __init__(self, core: client.CoreV1Api, task: str) -> None:
        self.core, self.task = core, task
        self.attempts: dict[str, int] = {}
        self.running: dict[str, bool] = {}
        self.messages: dict[str, str] = {}  # each pod's termination message, once it ended
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodLedger:
        self._thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _note(self, pod: Any) -> None:
        name = pod.metadata.name
        annotations = pod.metadata.annotations or {}
        self.attempts[name] = int(annotations.get(ANNOTATION_ATTEMPT, "0"))
        self.running[name] = self.running.get(name, False) or pod.status.phase == "Running"
        for cs in pod.status.container_statuses or []:
            done = cs.state.terminated if cs.state else None
            if done is not None and done.message:
                self.messages[name] = done.message

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for pod in task_pods(self.core, self.task):
                    self._note(pod)
                w = watch.Watch()
                for event in w.stream(
                    self.core.list_namespaced_pod,
                    NAMESPACE,
                    label_selector=f"kubemap.io/task={self.task}",
                    timeout_seconds=5,
                    _request_timeout=10,
                ):
                    self._note(event["object"])
                    if self._stop.is_set():
                        w.stop()
                        return
            except Exception:  # the API server is away: list again when it is back
                time.sleep(0.5)

    def running_pods(self) -> list[str]:
        return [
            p.metadata.name
            for p in task_pods(self.core, self.task)
            if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
        ]

    def finished_work(self, pod: str) -> bool:
        """The pod's worker reported its whole slice done (its summary line), even if the pod
        was deleted before Kubernetes marked it Succeeded."""
        report = Report.parse(self.messages.get(pod))
        return report is not None and bool(report.succeeded) and not report.failed

    @property
    def retries(self) -> int:
        """Pods beyond the first attempt of their slice: the retries spent."""
        return sum(1 for a in self.attempts.values() if a > 0)


@dataclass
class Verdict:
    name: str
    total: int
    pods: int
    retries: int
    results: int
    kept_failed_pods: int
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.name}: Succeeded, {self.total} indices counted once, {self.results} result "
            f"objects, {self.pods} pods, {self.retries} retries spent, "
            f"{self.kept_failed_pods} failed pods kept for their logs"
        )


def result_objects(store_url: str, name: str) -> list[tuple[int, int]]:
    url = urlparse(store_url)
    prefix = f"{url.path.strip('/')}/{name}/results/".lstrip("/")
    s3 = s3_client()
    spans = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=url.netloc, Prefix=prefix):
        for obj in page.get("Contents", []):
            spans.append(parse_result_key("results/" + obj["Key"][len(prefix) :]))
    return sorted(spans)


def wait_settled(core: client.CoreV1Api, name: str, timeout: float = 90) -> list[Any]:
    """Pods of a finished task once none runs, none holds the finalizer and the succeeded
    ones are deleted (the operator releases finalizers first and deletes right after)."""
    deadline = time.monotonic() + timeout
    while True:
        pods = task_pods(core, name)
        busy = [
            p.metadata.name
            for p in pods
            if POD_FINALIZER in (p.metadata.finalizers or []) or p.status.phase != "Failed"
        ]
        if not busy:
            return pods
        if time.monotonic() > deadline:
            raise AssertionError(
                f"pods left running, succeeded but not deleted, or holding {POD_FINALIZER}: {busy}"
            )
        time.sleep(0.5)


def check_outcome(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    name: str,
    total: int,
    ledger: PodLedger,
) -> Verdict:
    """Assert the promise; return the counts for the scenario's report line."""
    body = get_task(custom, name)
    status = body.get("status") or {}
    assert status.get("phase") == "Succeeded", status
    assert status.get("succeeded") == total and status.get("failed") == 0, status
    assert status.get("succeededIndexes") == (f"0-{total - 1}" if total > 1 else "0"), status
    spans = result_objects(body["spec"]["store"]["url"], name)
    covered = [i for start, count in spans for i in range(start, start + count)]
    assert sorted(covered) == list(range(total)), (
        f"result objects do not cover each index exactly once: {spans}"
    )
    left = wait_settled(core, name)  # only failed pods, kept for their logs, remain
    return Verdict(
        name=name,
        total=total,
        pods=len(ledger.attempts),
        retries=ledger.retries,
        results=len(spans),
        kept_failed_pods=len(left),
    )


def wait_finished(custom: client.CustomObjectsApi, name: str, timeout: float) -> dict[str, Any]:
    """The task once its phase is final; API errors (a restarting server) are waited out."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = get_task(custom, name).get("status") or {}
        except Exception:
            time.sleep(0.5)
            continue
        if status.get("phase") in ("Succeeded", "Failed", "Cancelled"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"MapTask {name} not finished after {timeout:.0f}s: {status}")


def wait_progress(
    custom: client.CustomObjectsApi, name: str, succeeded: int, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while (get_task(custom, name).get("status") or {}).get("succeeded", 0) < succeeded:
        assert time.monotonic() < deadline, (
            f"{name}: fewer than {succeeded} succeeded in {timeout}s"
        )
        time.sleep(0.3)


REPORTED: list[str] = []  # conftest's pytest_terminal_summary prints them after the run


def report(line: str) -> None:
    """One figure line per fault test. pytest captures a passing test's output, so the lines
    are also kept and printed together at the end of the run (`grep CHAOS` in the CI log)."""
    REPORTED.append(line)
    print(f"\nCHAOS {line}", flush=True)


def opts(**kw: Any) -> dict[str, Any]:
    """SDK options that run on the test cluster."""
    return {
        "backend": "kubernetes",
        "namespace": NAMESPACE,
        "store": os.environ.get("KUBEMAP_STORE"),
        **kw,
    }
