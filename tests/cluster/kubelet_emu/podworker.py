"""One thread per pod on the node: the kubelet's pod worker, with processes for containers.

The worker owns its pod's containers (Slot objects) and reacts to three kinds of event
on its queue: a newer pod object from the watch, a container process that exited, and
"gone" (the pod object was removed). Between events it drives the pod forward (start init
containers in order, then all containers; restart per restartPolicy with back-off),
enforces activeDeadlineSeconds, and patches the pod status whenever it changes.
"""

from __future__ import annotations

import json
import logging
import queue
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from .api import Obj, delete_pod, pod_path
from .containers import Slot, parse_time, should_restart
from .envresolve import EnvConfigError
from .launch import Context, pod_dir_for, prepare_launch
from .podstatus import TERMINAL_PHASES, Terminated, pod_status
from .processes import ContainerPaths, kill_group, termination_message
from .sa_token import PodCredentials

log = logging.getLogger("kubelet_emu.pod")

RETRY_SETUP = 2.0
NO_COMMAND = (
    "the kubemap node emulator cannot run an image's entrypoint: it does not pull images and "
    "runs the container's command on the host; set `command` (and `args`) on container {name!r}"
)


class PodWorker(threading.Thread):
    def __init__(
        self, pod: Obj, ctx: Context, on_done: Callable[[str], None], recovered: bool
    ) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.pod = pod
        self.ctx = ctx
        self.on_done = on_done
        self.uid: str = meta["uid"]
        self.ref = f"{meta['namespace']}/{meta['name']}"
        self.dir = pod_dir_for(ctx.pods_dir, pod)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        spec = pod["spec"]
        self.policy = str(spec.get("restartPolicy") or "Always")
        self.inits = [Slot(c, init=True) for c in spec.get("initContainers") or []]
        self.mains = [Slot(c, init=False) for c in spec.get("containers") or []]
        for slot in self.slots:
            slot.extra["pod_ref"] = f"{meta['name']}_{meta['namespace']}({self.uid})"
        status = pod.get("status") or {}
        self.start_time = parse_time(status.get("startTime")) or time.time()
        self.creds = PodCredentials(ctx.api, ctx.cluster, self.dir)
        self.gone = False
        self.last_posted = ""
        self.post_failed = False
        self.warned: set[tuple[str, str]] = set()
        if recovered:
            self._restore(status)

    # -- interface for the dispatcher (any thread) --
    def update(self, pod: Obj) -> None:
        self.events.put(("pod", pod))

    def vanish(self) -> None:
        self.events.put(("gone", None))

    @property
    def slots(self) -> list[Slot]:
        return self.inits + self.mains

    # -- the worker thread --
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("%s: pod worker failed; killing its processes", self.ref)
            for slot in self.slots:
                if slot.proc is not None:
                    kill_group(slot.proc.pid, signal.SIGKILL)
        finally:
            self.on_done(self.uid)

    def _run(self) -> None:
        log.info("%s: starting pod", self.ref)
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            if self.ctx.stopping.is_set():
                return
            if self.gone:
                self._kill(0)
                return
            if (self.pod["metadata"]).get("deletionTimestamp"):
                self._terminate_for_deletion()
                return
            if self._deadline_passed():
                self._terminate_for_deadline()
                return
            self._drive()
            status = self._status()
            sidecars = [s for s in self.inits if s.sidecar and s.proc is not None]
            if status["phase"] in TERMINAL_PHASES and sidecars:
                log.info("%s: containers are done; stopping the sidecars", self.ref)
                self._kill(self._termination_grace(), only=sidecars)
                status = self._status()
            self._post(status)
            if status["phase"] in TERMINAL_PHASES and not self.post_failed:
                log.info("%s: %s", self.ref, status["phase"])
                return
            self._wait(self._next_wakeup())

    def _wait(self, timeout: float | None) -> None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._apply(event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    def _apply(self, event: tuple[str, Any]) -> None:
        kind, data = event
        if kind == "pod":
            self.pod = data
        elif kind == "gone":
            self.gone = True
        elif kind == "exit":
            slot, run_id, code, when = data
            if slot.run_id == run_id and not self.ctx.stopping.is_set():
                self._on_exit(slot, code, when, terminating=False)

    def _next_wakeup(self) -> float | None:
        now = time.monotonic()
        times = [s.retry_at for s in self.slots if s.state == "waiting" and s.retry_at > now]
        creds_due = self.creds.due()
        if creds_due is not None:
            times.append(creds_due)
        deadline = self._deadline()
        if deadline is not None:
            times.append(now + max(0.0, deadline - time.time()))
        if self.post_failed:
            times.append(now + RETRY_SETUP)
        return max(0.05, min(times) - now) if times else None

    # -- driving containers --
    def _drive(self) -> None:
        now = time.monotonic()
        error = self.creds.tick(self.pod, now)
        if error:
            log.warning("%s: %s", self.ref, error)
            self._warn_once("FailedMount", error)
            for slot in self.slots:
                if slot.state == "waiting":
                    slot.waiting_message = error
        if not self.creds.ready:
            return
        for slot in self.inits:
            if slot.succeeded:
                continue
            if slot.state == "waiting" and slot.retry_at <= now:
                self._start(slot)
            if slot.sidecar and slot.instances > 0:
                continue  # a started sidecar keeps running beside what follows
            if not slot.succeeded:
                return
        for slot in self.mains:
            if slot.state == "waiting" and slot.retry_at <= now:
                self._start(slot)

    def _start(self, slot: Slot) -> None:
        paths = ContainerPaths(self.dir, slot.name)
        try:
            launch = prepare_launch(self.ctx, self.pod, slot.spec, paths, self.creds.kubeconfig)
        except EnvConfigError as exc:
            message = str(exc)
            log.warning(
                "%s: container %s: CreateContainerConfigError: %s", self.ref, slot.name, message
            )
            slot.mark_waiting("CreateContainerConfigError", message, time.monotonic() + RETRY_SETUP)
            self._warn_once("Failed", f"Error: {message}")
            return
        argv, env = launch.argv, launch.env
        slot.begin_instance()
        now = time.time()
        if not argv:
            term = Terminated(
                128, "ContainerCannotRun", NO_COMMAND.format(name=slot.name), None, now, ""
            )
            self._on_exit_term(slot, term, terminating=False)
            return
        try:
            proc = self.ctx.registry.start(argv, env, self.dir, paths)
        except OSError as exc:
            message = f"exec {argv[0]!r} failed: {exc.strerror or exc} (the command runs on the host, PATH={env['PATH']})"
            term = Terminated(128, "StartError", message, None, now, "")
            self._on_exit_term(slot, term, terminating=False)
            return
        slot.mark_running(proc, now)
        log.info(
            "%s: container %s started (pid %d): %.200r",
            self.ref,
            slot.name,
            proc.pid,
            shlex.join(argv),
        )
        threading.Thread(
            target=self._reap, args=(slot, slot.run_id, proc), name=f"wait-{proc.pid}", daemon=True
        ).start()

    def _reap(self, slot: Slot, run_id: int, proc: subprocess.Popen[bytes]) -> None:
        code = self.ctx.registry.wait(proc)
        self.events.put(("exit", (slot, run_id, code, time.time())))

    def _on_exit(self, slot: Slot, code: int, when: float, *, terminating: bool) -> None:
        signum = -code if code < 0 else None
        exit_code = 128 + signum if signum else code
        paths = ContainerPaths(self.dir, slot.name)
        policy = str(slot.spec.get("terminationMessagePolicy") or "File")
        term = Terminated(
            exit_code=exit_code,
            reason="Completed" if exit_code == 0 else "Error",
            message=termination_message(paths, policy, exit_code),
            started_at=slot.running_since,
            finished_at=when,
            container_id=slot.container_id,
            signal=signum,
        )
        log.info("%s: container %s exited with %d", self.ref, slot.name, exit_code)
        self._on_exit_term(slot, term, terminating=terminating)

    def _on_exit_term(self, slot: Slot, term: Terminated, *, terminating: bool) -> None:
        restart = not terminating and should_restart(
            self.policy, init=slot.init, exit_code=term.exit_code, sidecar=slot.sidecar
        )
        if term.reason in ("ContainerCannotRun", "StartError"):
            self._warn_once("Failed", f"Error: {term.message}")
        slot.finish(term, restart=restart, backoff=self.ctx.backoff, now_mono=time.monotonic())
        if slot.state == "waiting" and slot.waiting_reason == "CrashLoopBackOff":
            message = f"Back-off restarting failed container {slot.name} in pod {self.ref}"
            self.ctx.events.warn(self.pod, "BackOff", message)

    def _warn_once(self, reason: str, message: str) -> None:
        if (reason, message) not in self.warned:
            self.warned.add((reason, message))
            self.ctx.events.warn(self.pod, reason, message)

    # -- status --
    def _status(self, **overrides: Any) -> dict[str, Any]:
        return pod_status(
            self.pod,
            [s.view() for s in self.inits],
            [s.view() for s in self.mains],
            now=time.time(),
            start_time=self.start_time,
            host_ip=self.ctx.host_ip,
            **overrides,
        )

    def _post(self, status: dict[str, Any]) -> None:
        key = json.dumps(
            {k: v for k, v in status.items() if k != "conditions"}, sort_keys=True
        ) + json.dumps([(c["type"], c["status"]) for c in status["conditions"]])
        if key == self.last_posted and not self.post_failed:
            return
        meta = self.pod["metadata"]
        body = {"metadata": {"uid": self.uid}, "status": status}
        try:
            updated = self.ctx.api.patch(pod_path(meta["namespace"], meta["name"], "status"), body)
        except ApiException as exc:
            if exc.status == 404:
                log.info("%s: pod is gone", self.ref)
                self.gone = True
                self.post_failed = False
                return
            detail = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
            log.warning("%s: status update failed: %s %.400s", self.ref, exc.status, detail)
            self.post_failed = True
            return
        except Exception as exc:
            log.warning("%s: status update failed: %s", self.ref, exc)
            self.post_failed = True
            return
        self.post_failed = False
        self.last_posted = key
        if updated.get("status", {}).get("conditions"):
            self.pod = {**self.pod, "status": updated["status"]}

    # -- termination --
    def _deadline(self) -> float | None:
        seconds = (self.pod.get("spec") or {}).get("activeDeadlineSeconds")
        return None if seconds is None else self.start_time + float(seconds)

    def _deadline_passed(self) -> bool:
        deadline = self._deadline()
        return deadline is not None and time.time() >= deadline

    def _termination_grace(self) -> float:
        spec_grace = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        return 30.0 if spec_grace is None else float(spec_grace)

    def _kill(self, grace: float, only: list[Slot] | None = None) -> None:
        """SIGTERM the containers' process groups, SIGKILL after `grace` seconds, reap them."""
        targets = self.slots if only is None else only
        began = time.monotonic()
        term_deadline = began + grace
        kill_deadline: float | None = None
        for slot in targets:
            if slot.proc is not None:
                kill_group(slot.proc.pid, signal.SIGTERM)
        while any(s.proc is not None for s in targets):
            now = time.monotonic()
            if kill_deadline is None and now >= term_deadline:
                for slot in targets:
                    if slot.proc is not None:
                        kill_group(slot.proc.pid, signal.SIGKILL)
                kill_deadline = now + 10
            if kill_deadline is not None and now >= kill_deadline:
                log.error("%s: processes survived SIGKILL for 10 s; giving up on them", self.ref)
                break
            try:
                kind, data = self.events.get(
                    timeout=max(0.0, (kill_deadline or term_deadline) - now)
                )
            except queue.Empty:
                continue
            if kind == "exit":
                slot, run_id, code, when = data
                if slot.run_id == run_id:
                    self._on_exit(slot, code, when, terminating=True)
            elif kind == "pod":
                self.pod = data
                shorter = data["metadata"].get("deletionGracePeriodSeconds")
                if shorter is not None:  # a second delete may shorten the grace period
                    term_deadline = min(term_deadline, began + float(shorter))
            elif kind == "gone":
                self.gone = True
                term_deadline = min(term_deadline, time.monotonic())
        for slot in targets:
            if slot.state != "terminated":
                slot.state = "terminated"
                slot.terminated = slot.last_terminated or Terminated(
                    137,
                    "ContainerStatusUnknown",
                    "The container could not be located when the pod was terminated",
                    None,
                    time.time(),
                    "",
                )

    def _terminate_for_deletion(self) -> None:
        meta = self.pod["metadata"]
        grace = float(meta.get("deletionGracePeriodSeconds") or 0)
        log.info("%s: deleting, grace period %gs", self.ref, grace)
        self._kill(grace)
        if not self.gone:
            self._post(self._status(terminating=True))
            delete_pod(self.ctx.api, self.pod)

    def _terminate_for_deadline(self) -> None:
        grace = self._termination_grace()
        log.info("%s: activeDeadlineSeconds exceeded, killing with grace %gs", self.ref, grace)
        message = "Pod was active on the node longer than the specified deadline"
        self.ctx.events.warn(self.pod, "DeadlineExceeded", message)
        self._kill(grace)
        for _ in range(5):
            if self.gone:
                return
            self._post(
                self._status(
                    forced_phase="Failed",
                    reason="DeadlineExceeded",
                    message=message,
                )
            )
            if not self.post_failed:
                log.info("%s: Failed (DeadlineExceeded)", self.ref)
                return
            time.sleep(RETRY_SETUP)

    def _restore(self, status: Mapping[str, Any]) -> None:
        log.info(
            "%s: taking over a pod started before this emulator; its processes are gone", self.ref
        )
        by_name = {c.get("name"): c for c in status.get("initContainerStatuses") or []}
        by_name.update({c.get("name"): c for c in status.get("containerStatuses") or []})
        for slot in self.slots:
            if slot.name in by_name:
                slot.restore(by_name[slot.name], self.policy)
