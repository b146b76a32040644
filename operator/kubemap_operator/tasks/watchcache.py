"""What the watches show of MapTasks and their pods, so that a reconcile reads nothing from the
API server (the informer cache of a client-go controller).

kopf already watches MapTasks and kubemap pods; two kopf indexes (tasks/handlers.py) keep the
latest body of each: MapTasks by (namespace, name), pods by (namespace, kubemap.io/task label).
kopf fills them from its first listing before any handler runs, and updates them before the
handlers of each event run.

A watch lags behind this operator's own writes. Two of them matter, so each is shown here as
soon as the API server accepts it, until the watch shows it too (client-go's controllers keep
"expectations" for the same reason):

* the status. It is written first (the record of outcomes); then finished pods lose their
  finalizer and go. A reconcile that saw those pods gone but the status from before the write
  would plan their indices again and write the older status back over the newer. So the
  status a write returned is used until the watch delivers that resourceVersion, or longer:
  this operator is the only writer of a MapTask's status, so its last write is the status.
* created pods. Until the watch shows them they count as pending pods, so the next round
  neither creates them again (their deterministic names would make that a 409, but each costs
  a call and a rate-limit token) nor starts other indices in their place beyond parallelism.
* deleted pods whose outcome is recorded. Until the watch shows them gone they are left out,
  so the next round does not release and delete them again (measured on the test cluster: a
  404 for about every second reconcile, as a pod's own events wait behind its handler).

Own writes are trusted over the watch for OWN_WRITE_SECONDS at most (the status excepted):
past that, what the watch shows wins, and a pod seen again is planned again. Everything else
a lagging watch shows (a removed finalizer still on) is planned idempotently: outcomes union
into ranges, and a second release of a pod answers 409, which the API layer ignores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubemap.contract import LABEL_TASK, task_label

from kubemap_operator.kubeapi import TaskApi

Key = tuple[str, str]
# A pod this operator created (deleted) that the watch has not shown (still shows) after this
# long is taken as the watch shows it: created again (a 409 if it exists), or planned again.
OWN_WRITE_SECONDS = 10.0


@dataclass(frozen=True)
class _Written:
    uid: str
    resource_version: str
    status: dict[str, Any]


class WatchCache:
    def __init__(
        self,
        tasks: Mapping[Key, Iterable[dict[str, Any]]],
        pods: Mapping[Key, Iterable[dict[str, Any]]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """tasks: MapTask bodies by (namespace, name); pods: pod bodies by (namespace, the
        kubemap.io/task label). kopf's indexes are such mappings; so is a dict of lists."""
        self._tasks = tasks
        self._pods = pods
        self._clock = clock
        self._written: dict[Key, _Written] = {}
        self._created: dict[Key, dict[str, tuple[float, dict[str, Any]]]] = {}
        self._deleted: dict[Key, dict[str, float]] = {}

    def task(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The MapTask as last seen, with the status this operator last wrote; None: gone."""
        seen = list(self._tasks.get((namespace, name), ()))
        if not seen:
            return None
        # Two objects of one name only while an old one's deletion is still on its way.
        body = max(seen, key=lambda b: str((b.get("metadata") or {}).get("creationTimestamp")))
        meta = body.get("metadata") or {}
        written = self._written.get((namespace, name))
        if written is None or written.uid != meta.get("uid"):
            return body
        if written.resource_version == meta.get("resourceVersion"):
            del self._written[(namespace, name)]  # the watch has caught up with the write
            return body
        return {**body, "status": written.status}

    def pods(self, namespace: str, task_name: str) -> list[dict[str, Any]]:
        """The task's pods as last seen, with those created since and without those deleted
        since, as far as the watch has not shown it yet."""
        key = (namespace, task_label(task_name))
        seen = list(self._pods.get(key, ()))
        created, deleted = self._created.get(key), self._deleted.get(key)
        if not created and not deleted:
            return seen
        names = {(p.get("metadata") or {}).get("name") for p in seen}
        now = self._clock()
        if created:
            for name, (when, _) in list(created.items()):
                if name in names or now - when > OWN_WRITE_SECONDS:
                    del created[name]
        if deleted:
            for name, when in list(deleted.items()):
                if name not in names or now - when > OWN_WRITE_SECONDS:
                    del deleted[name]
            seen = [p for p in seen if (p.get("metadata") or {}).get("name") not in deleted]
        for mine in (self._created, self._deleted):
            if not mine.get(key):
                mine.pop(key, None)
        return [*seen, *(manifest for _, manifest in (created or {}).values())]

    def wrote_status(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """The API server accepted a status write and answered with the object after it."""
        meta = body.get("metadata") or {}
        self._written[(namespace, name)] = _Written(
            str(meta.get("uid", "")),
            str(meta.get("resourceVersion", "")),
            dict(body.get("status") or {}),
        )

    def created_pod(self, namespace: str, manifest: dict[str, Any]) -> None:
        meta = manifest.get("metadata") or {}
        key = (namespace, str((meta.get("labels") or {}).get(LABEL_TASK, "")))
        self._created.setdefault(key, {})[str(meta.get("name"))] = (self._clock(), manifest)

    def deleted_pod(self, namespace: str, task_name: str, name: str) -> None:
        """A pod whose outcome is recorded was released and deleted: nothing left to plan."""
        key = (namespace, task_label(task_name))
        self._deleted.setdefault(key, {})[name] = self._clock()

    def forget(self, namespace: str, name: str) -> None:
        """The task is gone: drop what was laid over the watch's view of it."""
        self._written.pop((namespace, name), None)
        self._created.pop((namespace, task_label(name)), None)
        self._deleted.pop((namespace, task_label(name)), None)


class WriteThrough:
    """A TaskApi whose status writes and pod creations show in the cache at once."""

    def __init__(self, api: TaskApi, cache: WatchCache) -> None:
        self.api = api
        self.cache = cache

    async def get_task(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.api.get_task(namespace, name)

    async def create_pod(
        self, namespace: str, body: dict[str, Any]
    ) -> Literal["created", "exists"]:
        outcome = await self.api.create_pod(namespace, body)
        if outcome == "created":
            self.cache.created_pod(namespace, body)
        return outcome

    async def remove_finalizer(self, namespace: str, pod: dict[str, Any]) -> None:
        await self.api.remove_finalizer(namespace, pod)

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self.api.delete_pod(namespace, name)

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        body = await self.api.patch_status(namespace, name, status)
        self.cache.wrote_status(namespace, name, body)
        return body

    async def delete_task(self, namespace: str, name: str) -> None:
        await self.api.delete_task(namespace, name)


__all__ = ["OWN_WRITE_SECONDS", "WatchCache", "WriteThrough"]
