"""What a real node changes on the host, recorded before ``up`` and put back on ``down``.

kubelet, kube-proxy, containerd and the bridge CNI plugin write sysctls, add iptables chains,
create cgroups, mount volumes and network namespaces, and add links (the bridge, veths).
``snapshot()`` records all of that; ``restore()`` undoes what differs; ``diff()`` names what
still differs, which ``down`` reports and the tests assert to be empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Every sysctl that kubelet (setupKernelTunables), kube-proxy and the bridge plugin may write.
SYSCTLS = (
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle", "raw")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Host paths the node may create outside the cluster's state dir (kubelet hard-codes some).
PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/netns", "/var/run/netns")


@dataclass
class HostState:
    sysctls: dict[str, str] = field(default_factory=dict)
    iptables: dict[str, str] = field(default_factory=dict)  # "iptables/nat" -> rules
    mounts: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> HostState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _rules(tool: str, table: str) -> str | None:
    """The table's chains and rules without counters or comments; None if it does not exist."""
    if shutil.which(tool) is None:
        return None
    run = subprocess.run([f"{tool}-save", "-t", table], capture_output=True, text=True)
    if run.returncode != 0 or "*" + table not in run.stdout:
        return None
    lines = []
    for line in run.stdout.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith(":"):
            line = line.rsplit(" ", 1)[0]  # drop "[packets:bytes]"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _cgroups() -> list[str]:
    """Every cgroup directory two levels deep in each hierarchy (kubepods/burstable, ...)."""
    found: list[str] = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
        if not hierarchy.is_dir() or hierarchy.is_symlink():
            continue
        for child in hierarchy.iterdir():
            if child.is_dir():
                found.append(str(child))
                found.extend(str(c) for c in child.iterdir() if c.is_dir())
    return sorted(found)


def _mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].encode().decode("unicode_escape"))
    return sorted(set(points))


def _links() -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").iterdir())


def snapshot() -> HostState:
    state = HostState()
    for key in SYSCTLS:
        value = _read(Path("/proc/sys") / key)
        if value is not None:
            state.sysctls[key] = value
    for tool in IPTABLES:
        for table in TABLES:
            rules = _rules(tool, table)
            if rules is not None:
                state.iptables[f"{tool}/{table}"] = rules
    state.mounts = _mounts()
    state.cgroups = _cgroups()
    state.links = _links()
    state.paths = sorted(p for p in PATHS if os.path.lexists(p))
    return state


def diff(before: HostState, after: HostState) -> list[str]:
    """One line per difference, e.g. "sysctl kernel/panic: 0 -> 10"; empty when equal."""
    out = [
        f"sysctl {k}: {before.sysctls.get(k)} -> {after.sysctls.get(k)}"
        for k in sorted(set(before.sysctls) | set(after.sysctls))
        if before.sysctls.get(k) != after.sysctls.get(k)
    ]
    out += [
        f"{k} rules changed"
        for k in sorted(set(before.iptables) | set(after.iptables))
        if before.iptables.get(k) != after.iptables.get(k)
        # an empty table that only now exists (iptables-nft creates them on use) is no change
        and not (k not in before.iptables and _empty(after.iptables[k]))
        and not (k not in after.iptables and _empty(before.iptables[k]))
    ]
    for what in ("mounts", "cgroups", "links", "paths"):
        old, new = set(getattr(before, what)), set(getattr(after, what))
        out += [f"{what[:-1]} added: {x}" for x in sorted(new - old)]
        out += [f"{what[:-1]} removed: {x}" for x in sorted(old - new)]
    return out


def _empty(rules: str) -> bool:
    return all(
        line.startswith(("*", "COMMIT"))
        or (line.rsplit(" ", 1)[-1] == "ACCEPT" and line.startswith(":"))
        for line in rules.splitlines()
        if line
    )


def restore(before: HostState) -> list[str]:
    """Undo what differs from ``before`` (mounts, cgroups, links, iptables, sysctls, paths);
    return what could not be undone."""
    now = snapshot()
    for point in sorted(set(now.mounts) - set(before.mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    for cgroup in sorted(_new_cgroups(before.cgroups), key=len, reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(cgroup)
    for link in sorted(set(_links()) - set(before.links)):
        subprocess.run(["ip", "link", "delete", link], capture_output=True)
    for tool in IPTABLES:
        for table in TABLES:
            key = f"{tool}/{table}"
            if _rules(tool, table) == before.iptables.get(key):
                continue
            if key in before.iptables:
                subprocess.run(
                    [f"{tool}-restore", "-T", table], input=before.iptables[key], text=True,
                    capture_output=True,
                )  # fmt: skip
            else:
                subprocess.run([tool, "-t", table, "-F"], capture_output=True)
                subprocess.run([tool, "-t", table, "-X"], capture_output=True)
    for key, value in before.sysctls.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(value)
    for path in sorted(set(PATHS) - set(before.paths)):
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)
    return diff(before, snapshot())


def _cgroups_deep() -> list[str]:
    """Every cgroup directory at any depth (pods and containers sit below kubepods/<qos>)."""
    found: list[str] = []
    for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else []:
        if hierarchy.is_dir() and not hierarchy.is_symlink():
            for root, dirs, _ in os.walk(hierarchy):
                found.extend(os.path.join(root, d) for d in dirs)
    return found


def _new_cgroups(before: list[str]) -> list[str]:
    """Cgroups at any depth whose first- or second-level ancestor did not exist before:
    one below a cgroup that was there already (another tenant's) is not ours to remove."""
    existed = set(before)
    base = len(CGROUP_ROOT.parts) + 1  # /sys/fs/cgroup/<hierarchy>
    ours = []
    for cgroup in _cgroups_deep():
        parts = Path(cgroup).parts
        ancestors = [str(Path(*parts[: base + 1]))]
        if len(parts) > base + 1:
            ancestors.append(str(Path(*parts[: base + 2])))
        if any(a not in existed for a in ancestors):
            ours.append(cgroup)
    return ours
