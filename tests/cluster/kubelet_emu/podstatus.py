"""Pod status as the kubelet writes it, built by pure functions from container snapshots.

`pod_phase` follows kubelet's getPhase: a container waiting to be restarted (it has a last
termination state) counts as stopped, not waiting; with restartPolicy Always a pod whose
containers all exited is still Running (they are restarting) unless the pod is being
terminated, in which case it ends Succeeded (all exited 0) or Failed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

TERMINAL_PHASES = ("Succeeded", "Failed")


def rfc3339(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    message: str
    started_at: float | None
    finished_at: float
    container_id: str
    signal: int | None = None

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": rfc3339(self.started_at) if self.started_at is not None else None,
            "finishedAt": rfc3339(self.finished_at),
        }
        if self.message:
            out["message"] = self.message
        if self.container_id:
            out["containerID"] = self.container_id
        if self.signal:
            out["signal"] = self.signal
        return out


def exited_ok(state: str, terminated: Terminated | None) -> bool:
    """A container has succeeded when it terminated with exit code 0."""
    return state == "terminated" and terminated is not None and terminated.exit_code == 0


@dataclass(frozen=True)
class ContainerView:
    """One container at one moment; `state` decides which of the optional fields apply."""

    name: str
    image: str
    state: Literal["waiting", "running", "terminated"]
    restart_count: int = 0
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    running_since: float | None = None
    container_id: str = ""
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    #: An init container with restartPolicy Always: runs beside the containers (KEP-753).
    sidecar: bool = False

    @property
    def init_complete(self) -> bool:
        """An init container lets the next one start: it succeeded, or (sidecar) it started."""
        if self.sidecar:
            return self.state != "waiting" or self.last_terminated is not None
        return self.succeeded

    @property
    def ready(self) -> bool:
        # Probes are not run: a running container is ready.
        return self.state == "running"

    @property
    def succeeded(self) -> bool:
        return exited_ok(self.state, self.terminated)

    def to_api(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.state == "running":
            state = {"running": {"startedAt": rfc3339(self.running_since or 0)}}
        elif self.state == "terminated" and self.terminated is not None:
            state = {"terminated": self.terminated.to_api()}
        else:
            waiting: dict[str, Any] = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready,
            "started": self.state == "running",
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {"terminated": self.last_terminated.to_api()}
            if self.last_terminated
            else {},
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def init_done(inits: Sequence[ContainerView]) -> bool:
    return all(c.init_complete for c in inits)


def pod_phase(
    restart_policy: str,
    inits: Sequence[ContainerView],
    containers: Sequence[ContainerView],
    *,
    terminating: bool,
) -> str:
    """kubelet's getPhase over container snapshots."""
    for init in inits:
        failed_for_good = (
            not init.sidecar
            and init.state == "terminated"
            and not init.succeeded
            and restart_policy == "Never"
        )
        if failed_for_good:
            return "Failed"
    if not init_done(inits):
        return "Failed" if terminating else "Pending"
    running = waiting = stopped = succeeded = 0
    for c in containers:
        if c.state == "running":
            running += 1
        elif c.state == "terminated":
            stopped += 1
            succeeded += int(c.succeeded)
        elif c.last_terminated is not None:
            stopped += 1
        else:
            waiting += 1
    if waiting > 0:
        return "Failed" if terminating and running == 0 else "Pending"
    if running > 0:
        return "Running"
    if terminating:
        return "Succeeded" if stopped == succeeded else "Failed"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else "Running"


def _condition(
    kind: str,
    ok: bool,
    old: Mapping[str, Mapping[str, Any]],
    now: float,
    reason: str = "",
    message: str = "",
) -> dict[str, Any]:
    status = "True" if ok else "False"
    previous = old.get(kind)
    since = (
        previous.get("lastTransitionTime")
        if previous and previous.get("status") == status and previous.get("lastTransitionTime")
        else rfc3339(now)
    )
    out: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since,
    }
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def pod_conditions(
    phase: str,
    inits: Sequence[ContainerView],
    containers: Sequence[ContainerView],
    old_conditions: Sequence[Mapping[str, Any]],
    now: float,
) -> list[dict[str, Any]]:
    old = {str(c.get("type")): c for c in old_conditions}
    terminal = phase in TERMINAL_PHASES
    completed = "PodCompleted" if terminal else ""
    initialized = init_done(inits) or phase == "Succeeded"
    pending_inits = [c.name for c in inits if not c.init_complete]
    sidecars = [c for c in inits if c.sidecar]
    unready = [c.name for c in [*sidecars, *containers] if not c.ready]
    ready = not terminal and initialized and not unready
    # Ready and ContainersReady agree here: no readiness gates, no probes.
    ready_reason = "" if ready else completed or "ContainersNotReady"
    ready_message = (
        "" if ready or terminal else f"containers with unready status: [{' '.join(unready)}]"
    )
    return [
        _condition("PodReadyToStartContainers", not terminal, old, now),
        _condition(
            "Initialized",
            initialized,
            old,
            now,
            reason=completed if initialized else "ContainersNotInitialized",
            message=""
            if initialized
            else f"containers with incomplete status: [{' '.join(pending_inits)}]",
        ),
        *(
            _condition(kind, ready, old, now, reason=ready_reason, message=ready_message)
            for kind in ("Ready", "ContainersReady")
        ),
        _condition("PodScheduled", True, old, now),
    ]


def pod_status(
    pod: Mapping[str, Any],
    inits: Sequence[ContainerView],
    containers: Sequence[ContainerView],
    *,
    now: float,
    start_time: float,
    host_ip: str,
    terminating: bool = False,
    forced_phase: str | None = None,
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The status object to patch onto `pod` (strategic merge: conditions merge by type)."""
    spec = pod.get("spec") or {}
    phase = forced_phase or pod_phase(
        str(spec.get("restartPolicy") or "Always"), inits, containers, terminating=terminating
    )
    old_conditions = (pod.get("status") or {}).get("conditions") or []
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": pod_conditions(phase, inits, containers, old_conditions, now),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": host_ip,
        "podIPs": [{"ip": host_ip}],
        "startTime": rfc3339(start_time),
        "containerStatuses": [c.to_api() for c in containers],
        "reason": reason,
        "message": message,
    }
    generation = (pod.get("metadata") or {}).get("generation")
    if generation is not None:  # PodObservedGenerationTracking (beta in 1.34)
        status["observedGeneration"] = generation
    if inits:
        status["initContainerStatuses"] = [c.to_api() for c in inits]
    return status
