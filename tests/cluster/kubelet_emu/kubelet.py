"""The kubelet's dispatcher: pods bound to this node, from a watch, to one worker each."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .api import Handler, Obj, delete_pod
from .launch import Context
from .podstatus import TERMINAL_PHASES
from .podworker import PodWorker
from .scheduler import NodeUsage

log = logging.getLogger("kubelet_emu.kubelet")


class Kubelet(Handler):
    def __init__(self, ctx: Context, usage: NodeUsage) -> None:
        self.ctx = ctx
        self.usage = usage
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()
        self._deleted: set[str] = set()
        self._side = ThreadPoolExecutor(max_workers=4, thread_name_prefix="final-delete")

    def on_list(self, items: list[Obj]) -> None:
        seen = {p["metadata"]["uid"] for p in items}
        for pod in items:
            self._handle(pod)
        with self._lock:
            lost = [w for uid, w in self._workers.items() if uid not in seen]
        for worker in lost:
            worker.vanish()

    def on_event(self, kind: str, obj: Obj) -> None:
        if kind == "DELETED":
            self._on_deleted(obj)
        else:
            self._handle(obj)

    def _handle(self, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        status: dict[str, Any] = pod.get("status") or {}
        with self._lock:
            worker = self._workers.get(uid)
            if worker is not None:
                worker.update(pod)
                return
            done = uid in self._finished or status.get("phase") in TERMINAL_PHASES
            if done or meta.get("deletionTimestamp"):
                self.usage.release(uid)
                if meta.get("deletionTimestamp") and uid not in self._deleted:
                    self._deleted.add(uid)
                    self._side.submit(self._final_delete, pod)
                return
            self.usage.assume(uid, pod)
            recovered = bool(status.get("startTime"))
            worker = PodWorker(pod, self.ctx, self._worker_done, recovered=recovered)
            self._workers[uid] = worker
        worker.start()

    def _final_delete(self, pod: Obj) -> None:
        try:
            delete_pod(self.ctx.api, pod)
        except Exception as exc:
            log.warning("final delete of %s failed: %s", pod["metadata"]["name"], exc)
            with self._lock:
                self._deleted.discard(pod["metadata"]["uid"])

    def _on_deleted(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        self.usage.release(uid)
        with self._lock:
            worker = self._workers.get(uid)
            self._finished.discard(uid)
            self._deleted.discard(uid)
        if worker is not None:
            worker.vanish()

    def _worker_done(self, uid: str) -> None:
        with self._lock:
            self._finished.add(uid)
            worker = self._workers.pop(uid, None)
            if worker is not None and worker.pod["metadata"].get("deletionTimestamp"):
                self._deleted.add(uid)  # the worker already issued the final delete
        self.usage.release(uid)
