"""Node emulator for kubemap's test cluster: one Kubernetes node whose pods are host processes.

    python tests/cluster/node_emulator.py --kubeconfig ADMIN_KUBECONFIG --node-name kubemap-node \\
        --state-dir DIR [--apiserver-url URL] [--cpu 2 --memory 24Gi --pods 200]

It plays two roles against a real kube-apiserver:

* the scheduler's: pods with no spec.nodeName (no schedulingGates, schedulerName
  default-scheduler) are bound to the node (pods/binding) when their resource requests
  fit its allocatable and their nodeSelector matches; otherwise they stay Pending with
  PodScheduled=False/Unschedulable. Affinity, taints and topology spread are ignored.
* the kubelet's: it registers the Node (capacity, Ready condition, a Lease in
  kube-node-lease renewed every 10 s) and, for each pod bound to it, runs the init
  containers in order (sidecars, i.e. restartPolicy Always, keep running beside the rest
  and are stopped when the containers are done), then every container's `command` +
  `args` as a local process in its own process group, with the environment resolved as
  the kubelet resolves it (value with $(VAR) expansion, fieldRef, resourceFieldRef,
  secretKeyRef, configMapKeyRef, envFrom; optional honoured). It reports status as the
  kubelet does:
  phase, conditions, containerStatuses with exit codes, reasons and termination
  messages; restarts per restartPolicy with back-off; honours deletion (SIGTERM to the
  process group, the grace period, SIGKILL, then the final delete with grace period 0)
  and activeDeadlineSeconds (Failed/DeadlineExceeded). A pod that mounts a
  ServiceAccount token gets a token from the TokenRequest API, bound to the pod, in a
  kubeconfig passed as KUBECONFIG, so RBAC is enforced on what the pod's process does;
  the token lives 24 h and is rewritten after 80% of that, as the kubelet does.

What it is NOT - read this before trusting a result from it:

* THE IMAGE IS NOT PULLED. The command runs on the host, where the project's virtualenv
  provides `python` and the kubemap commands (the venv's bin dir is first on PATH). A
  container without `command` fails with reason ContainerCannotRun: the emulator cannot
  run an image's entrypoint. `workingDir` is ignored; the cwd is the pod's directory.
* Volumes are not mounted, except the ServiceAccount token, which is written as files
  under <pod dir>/serviceaccount/ (not at /var/run/secrets/...) plus <pod dir>/kubeconfig,
  and emptyDir volumes: each is <pod dir>/volumes/<name>, shared by the pod's containers;
  env values and args naming a path under its mountPath are rewritten to that directory
  (a path the program builds itself from the mountPath is not).
* No isolation: no network namespace (podIP = hostIP = 127.0.0.1, so two pods listening
  on one port collide), no cgroups (resource limits are not enforced; requests only
  count for scheduling), same user as the emulator. Probes are not run: a running
  container is ready. No service environment variables (KUBERNETES_SERVICE_HOST...).
* The container's environment is built from scratch: PATH, HOME (the pod dir), HOSTNAME,
  LANG/LC_ALL/TZ, KUBEMAP_TESTCLUSTER_ID (testcluster's marker, so `down` finds strays),
  KUBEMAP_TERMINATION_LOG, KUBECONFIG (the pod's own) and the pod spec's variables. Nothing else leaks from the emulator, in particular not its admin
  KUBECONFIG.
* Logs and port-forward are served by a separate process, kubeletstream (Go, built by
  build.sh from ./kubeletstream with the kubelet's own portforward package), which
  `testcluster up` starts before the emulator and passes to it as --kubelet-port: the Node
  then advertises InternalIP 127.0.0.1 and daemonEndpoints.kubeletEndpoint.Port, so the
  API server proxies pods/log and pods/portforward there (after RBAC), over HTTPS with the
  cluster CA both ways. `kubectl logs` (follow, --tail, --limit-bytes; no --previous and
  no timestamps: one file per container, appended across restarts, lines carry no time)
  reads each container's stdout+stderr from STATE_DIR/pods/<namespace>_<pod>_<uid>/
  <container>.log (STATE_DIR is --state-dir, which `testcluster up` sets to <its state
  dir>/node); `-f` ends when the container's process does. Port-forward dials
  127.0.0.1:<port>, since pods share the host's network. Without --kubelet-port (the
  emulator run alone) neither works. `kubectl exec` and `attach` do not work.
* containerID is emulator://<pid>: the pid is the leader of the container's process group,
  so a test can kill it to simulate a crash.
* Only Warning events are recorded (Failed, BackOff, FailedMount, DeadlineExceeded,
  FailedScheduling), not the routine Normal ones (Scheduled, Pulled, Started...).
* Termination messages: terminationMessagePath is an in-image path; instead each
  container gets <pod dir>/<container>/termination-log, passed as env
  KUBEMAP_TERMINATION_LOG; up to 4096 bytes of it become state.terminated.message
  (FallbackToLogsOnError: the log's last 80 lines / 2048 bytes when the file is empty).
* Crash-loop back-off is 1 s doubling to 60 s (kubelet: 10 s to 5 min); see --help.
* Restart: pods found running when the emulator starts have lost their processes;
  restartPolicy Never marks those containers terminated (ContainerStatusUnknown, 137),
  the others are restarted. Process groups recorded by the previous emulator are killed.

SIGTERM (or SIGINT) stops it: every container process group gets SIGTERM, then SIGKILL
after --shutdown-grace seconds, and the emulator exits. Logs go to stderr with UTC
timestamps.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubelet_emu.main import main

if __name__ == "__main__":
    sys.exit(main())
