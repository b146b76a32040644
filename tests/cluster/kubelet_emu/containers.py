"""Per-container runtime state owned by one pod worker, and the kubelet's restart rules."""

from __future__ import annotations

import calendar
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .podstatus import ContainerView, Terminated, exited_ok

#: A container that ran this long resets its back-off, like kubelet (2 x the 5 min cap).
BACKOFF_RESET_AFTER = 600.0


@dataclass(frozen=True)
class Backoff:
    """Restart delays: the first restart is immediate, then base, 2*base, ... up to cap."""

    base: float = 1.0
    cap: float = 60.0

    def delay(self, failures: int) -> float:
        if failures <= 1:
            return 0.0
        return float(min(self.base * (2 ** (failures - 2)), self.cap))


def should_restart(
    restart_policy: str, *, init: bool, exit_code: int, sidecar: bool = False
) -> bool:
    if sidecar:
        return True
    if init:
        return restart_policy != "Never" and exit_code != 0
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))


def terminated_from_api(data: Mapping[str, Any]) -> Terminated:
    return Terminated(
        exit_code=int(data.get("exitCode", 0)),
        reason=str(data.get("reason") or ""),
        message=str(data.get("message") or ""),
        started_at=parse_time(data.get("startedAt")),
        finished_at=parse_time(data.get("finishedAt")) or time.time(),
        container_id=str(data.get("containerID") or ""),
    )


@dataclass(eq=False)
class Slot:
    """One container of the pod: its spec, what runs now, and what ran before."""

    spec: Mapping[str, Any]
    init: bool
    state: str = "waiting"
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    restart_count: int = 0
    instances: int = 0
    failures: int = 0
    running_since: float | None = None
    container_id: str = ""
    proc: subprocess.Popen[bytes] | None = None
    run_id: int = 0
    retry_at: float = 0.0
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def sidecar(self) -> bool:
        return self.init and self.spec.get("restartPolicy") == "Always"

    @property
    def succeeded(self) -> bool:
        return exited_ok(self.state, self.terminated)

    def view(self) -> ContainerView:
        state = self.state if self.state in ("running", "terminated") else "waiting"
        return ContainerView(
            name=self.name,
            image=str(self.spec.get("image") or ""),
            state=state,  # type: ignore[arg-type]
            restart_count=self.restart_count,
            waiting_reason=self.waiting_reason,
            waiting_message=self.waiting_message,
            running_since=self.running_since,
            container_id=self.container_id,
            terminated=self.terminated,
            last_terminated=self.last_terminated,
            sidecar=self.sidecar,
        )

    def begin_instance(self) -> None:
        """A new container instance is created: every one after the first is a restart."""
        if self.instances > 0 or self.last_terminated is not None:
            self.restart_count += 1
        self.instances += 1
        self.run_id += 1

    def mark_running(self, proc: subprocess.Popen[bytes], now: float) -> None:
        self.proc = proc
        self.state = "running"
        self.running_since = now
        self.container_id = f"emulator://{proc.pid}"
        self.terminated = None

    def mark_waiting(self, reason: str, message: str, retry_at: float) -> None:
        self.state = "waiting"
        self.waiting_reason = reason
        self.waiting_message = message
        self.retry_at = retry_at

    def finish(self, term: Terminated, *, restart: bool, backoff: Backoff, now_mono: float) -> None:
        """Record an exited instance; either stay terminated or wait to be restarted."""
        self.proc = None
        self.running_since = None
        if not restart:
            self.state = "terminated"
            self.terminated = term
            return
        ran = term.finished_at - (term.started_at or term.finished_at)
        self.failures = 1 if ran >= BACKOFF_RESET_AFTER else self.failures + 1
        delay = backoff.delay(self.failures)
        self.last_terminated = term
        self.terminated = None
        pod_hint = self.extra.get("pod_ref", "")
        self.mark_waiting(
            "CrashLoopBackOff" if delay else "ContainerCreating",
            f"back-off {delay:g}s restarting failed container={self.name} pod={pod_hint}"
            if delay
            else "",
            now_mono + delay,
        )

    def restore(self, status: Mapping[str, Any], restart_policy: str) -> None:
        """Take over a container an earlier emulator ran; its process is gone."""
        self.restart_count = int(status.get("restartCount") or 0)
        state = status.get("state") or {}
        last = (status.get("lastState") or {}).get("terminated")
        if last:
            self.last_terminated = terminated_from_api(last)
        if "terminated" in state:
            term = terminated_from_api(state["terminated"])
            if not should_restart(
                restart_policy, init=self.init, exit_code=term.exit_code, sidecar=self.sidecar
            ):
                self.state, self.terminated = "terminated", term
                return
            self.last_terminated = term
        elif "running" in state:
            lost = Terminated(
                exit_code=137,
                reason="ContainerStatusUnknown",
                message="the node emulator restarted and lost this container's process",
                started_at=parse_time(state["running"].get("startedAt")),
                finished_at=time.time(),
                container_id=str(status.get("containerID") or ""),
            )
            if not should_restart(
                restart_policy, init=self.init, exit_code=lost.exit_code, sidecar=self.sidecar
            ):
                self.state, self.terminated = "terminated", lost
                return
            self.last_terminated = lost
