"""The watch cache: the watches' view, with this operator's own writes shown until it catches up."""

from __future__ import annotations

from typing import Any

from kubemap.contract import LABEL_TASK, task_label
from kubemap_operator.tasks.watchcache import OWN_WRITE_SECONDS, WatchCache

NS = "ns"


def body(version: str, status: dict[str, Any], uid: str = "u1") -> dict[str, Any]:
    meta = {"name": "t", "namespace": NS, "uid": uid, "resourceVersion": version}
    return {"metadata": meta, "status": status}


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {LABEL_TASK: task_label("t")}}}


def test_a_written_status_shows_until_the_watch_delivers_that_version() -> None:
    tasks = {(NS, "t"): [body("1", {"succeeded": 0})]}
    cache = WatchCache(tasks, {})
    cache.wrote_status(NS, "t", body("2", {"succeeded": 3}))
    assert cache.task(NS, "t")["status"] == {"succeeded": 3}  # the watch is behind
    tasks[(NS, "t")] = [body("2", {"succeeded": 3})]
    assert cache.task(NS, "t")["status"] == {"succeeded": 3}  # caught up: the watch's own
    tasks[(NS, "t")] = [body("3", {"succeeded": 4})]  # and the write is no longer laid over
    assert cache.task(NS, "t")["status"] == {"succeeded": 4}


def test_a_write_to_an_older_object_of_the_same_name_is_not_shown() -> None:
    tasks = {(NS, "t"): [body("7", {"succeeded": 0}, uid="u2")]}
    cache = WatchCache(tasks, {})
    cache.wrote_status(NS, "t", body("5", {"succeeded": 3}, uid="u1"))
    assert cache.task(NS, "t")["status"] == {"succeeded": 0}


def test_gone_is_none_and_forget_drops_the_writes() -> None:
    tasks: dict[tuple[str, str], list[dict[str, Any]]] = {(NS, "t"): [body("1", {})]}
    cache = WatchCache(tasks, {})
    cache.wrote_status(NS, "t", body("2", {"succeeded": 1}))
    cache.forget(NS, "t")
    assert cache.task(NS, "t")["status"] == {}
    tasks.clear()
    assert cache.task(NS, "t") is None


def test_created_pods_count_until_the_watch_shows_them_or_for_a_while() -> None:
    now = [0.0]
    pods: dict[tuple[str, str], list[dict[str, Any]]] = {(NS, task_label("t")): [pod("t-0-0")]}
    cache = WatchCache({}, pods, clock=lambda: now[0])
    cache.created_pod(NS, pod("t-1-0"))
    cache.created_pod(NS, pod("t-2-0"))
    names = [p["metadata"]["name"] for p in cache.pods(NS, "t")]
    assert names == ["t-0-0", "t-1-0", "t-2-0"]
    pods[(NS, task_label("t"))].append(pod("t-1-0") | {"status": {"phase": "Running"}})
    shown = cache.pods(NS, "t")
    assert [p["metadata"]["name"] for p in shown] == ["t-0-0", "t-1-0", "t-2-0"]
    assert shown[1]["status"] == {"phase": "Running"}  # the watch's copy, not the manifest
    now[0] += OWN_WRITE_SECONDS + 1  # t-2-0 was never seen: not waited for any longer
    assert [p["metadata"]["name"] for p in cache.pods(NS, "t")] == ["t-0-0", "t-1-0"]


def test_deleted_pods_are_left_out_until_the_watch_shows_them_gone_or_for_a_while() -> None:
    now = [0.0]
    shown = [pod("t-0-0"), pod("t-1-0"), pod("t-2-0")]
    pods = {(NS, task_label("t")): shown}
    cache = WatchCache({}, pods, clock=lambda: now[0])
    cache.deleted_pod(NS, "t", "t-0-0")
    cache.deleted_pod(NS, "t", "t-1-0")
    assert [p["metadata"]["name"] for p in cache.pods(NS, "t")] == ["t-2-0"]
    del shown[0]  # the watch shows t-0-0 gone
    assert [p["metadata"]["name"] for p in cache.pods(NS, "t")] == ["t-2-0"]
    now[0] += OWN_WRITE_SECONDS + 1  # t-1-0 is still there (a finalizer kept it): plan it again
    assert [p["metadata"]["name"] for p in cache.pods(NS, "t")] == ["t-1-0", "t-2-0"]
