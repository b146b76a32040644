"""What the dashboard's pages show, and the one interface the two servers of it implement.

`Source` is where the rows come from: the operator's (its watch of MapTasks and
WorkerPools, its dispatcher's workers) or `kubemap dashboard`'s on a machine without a
cluster (the local store's tasks). Everything that grows with a task's size (timing records,
error records) is read from the task's store by kubemap.pages.server, never by a Source.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from kubemap.stores import Store

FINISHED_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})


@dataclass(frozen=True)
class TaskRow:
    """One task as the index lists it: small, from the MapTask status (or status.json)."""

    namespace: str
    name: str
    phase: str = "Pending"
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    active: int = 0
    pool: str = ""
    message: str = ""
    created: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "finished": self.finished}


@dataclass(frozen=True)
class Failure:
    """One error record of the task's store (errors/<index>)."""

    index: int
    type: str
    message: str
    traceback: str
    attempts: int


@dataclass(frozen=True)
class WorkerRow:
    name: str
    state: str  # busy, idle
    leases: int = 0
    tasks: str = ""  # the tasks its leases are of


@dataclass(frozen=True)
class PoolRow:
    namespace: str
    name: str
    replicas: int = 0  # workers wanted
    ready: int = 0
    busy: int = 0
    idle: int = 0
    tasks_served: int = 0
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PoolView:
    row: PoolRow
    workers: tuple[WorkerRow, ...] = ()
    tasks: tuple[TaskRow, ...] = ()  # the unfinished tasks it serves


class Source(Protocol):
    """Where a dashboard's rows come from (see the module's docstring)."""

    @property
    def where(self) -> str:
        """Shown in each page's heading: "cluster", "this machine (/path/to/store)"."""
        ...

    async def tasks(self) -> list[TaskRow]: ...

    async def task(self, namespace: str, name: str) -> TaskRow | None: ...

    async def task_store(self, namespace: str, name: str) -> Store | None:
        """The task's folder in its store (None: the task keeps nothing in a store)."""
        ...

    async def pools(self) -> list[PoolRow]: ...

    async def pool(self, namespace: str, name: str) -> PoolView | None: ...

    def rerun_command(self, row: TaskRow) -> str:
        """What a user types to run the task's failed indices again."""
        ...
