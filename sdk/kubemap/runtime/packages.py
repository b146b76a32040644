"""Runtime `packages` of warm pool workers: pip-installed once per worker and package set.

The pool's `spec.packages` and a task's own `spec.packages` together form the task's package
set. A worker installs each set once, with `pip install --target <cache>/<hash of the sorted
set>` and the package index its environment names (PIP_INDEX_URL and friends, pip's own
config), and puts that directory first on sys.path while it loads and runs the task's
function. An install that fails is a permanent failure of the task, not a retry loop: pip's
answer ("No matching distribution found for pandas==9.9") will not change on a retry.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from kubemap.contract import ENV_PACKAGE_CACHE, ENV_POOL_PACKAGES

INSTALL_TIMEOUT_SECONDS = 900.0
# A failed set is not tried again for this long: the task that asked has failed by then, and
# tasks queued behind it with the same set fail at once instead of each running pip; later
# ones try again (the index may have been down).
FAILURE_KEPT_SECONDS = 60.0
COMPLETE_MARKER = ".kubemap-complete"


class PackageInstallError(Exception):
    """pip could not install a package set; permanent for the task that asked for it."""


def package_set(*groups: Iterable[str] | None) -> tuple[str, ...]:
    """Sorted, de-duplicated union: the same packages in any order are one environment."""
    return tuple(sorted({p.strip() for g in groups if g for p in g if p.strip()}))


def pool_packages(environ: Mapping[str, str]) -> tuple[str, ...]:
    raw = environ.get(ENV_POOL_PACKAGES, "")
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except ValueError:
        raise PackageInstallError(
            f"{ENV_POOL_PACKAGES} is not a JSON list: {raw[:100]!r}"
        ) from None
    if not isinstance(value, list):
        raise PackageInstallError(f"{ENV_POOL_PACKAGES} is not a JSON list: {raw[:100]!r}")
    return package_set(str(v) for v in value)


def set_hash(packages: tuple[str, ...]) -> str:
    # The Python minor is part of the key: wheels for 3.11 are no use to 3.12.
    key = json.dumps([f"{sys.version_info.major}.{sys.version_info.minor}", *packages])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def default_cache(environ: Mapping[str, str]) -> Path:
    """KUBEMAP_PACKAGE_CACHE if writable (the pod's emptyDir), else one under HOME or /tmp."""
    for candidate in (
        environ.get(ENV_PACKAGE_CACHE),
        os.path.join(environ["HOME"], ".cache", "kubemap", "packages")
        if environ.get("HOME")
        else None,
        os.path.join(tempfile.gettempdir(), "kubemap-packages"),
    ):
        if not candidate:
            continue
        try:
            Path(candidate).mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return Path(candidate)
    raise PackageInstallError(
        f"no writable directory for runtime packages: set {ENV_PACKAGE_CACHE} to one (an emptyDir)"
    )


def _last_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return (errors or lines or ["pip gave no output"])[-1][:300]


class Environments:
    """The worker's package environments: installed once each, kept for the worker's life."""

    def __init__(self, cache: Path, *, log: object = None) -> None:
        self.cache = cache
        self.installs = 0  # pip runs that succeeded (tests and the log count them)
        self._failed: dict[tuple[str, ...], tuple[float, str]] = {}
        self._log = log if callable(log) else (lambda message: None)

    def path(self, packages: tuple[str, ...]) -> Path | None:
        """The directory holding the package set, installing it the first time."""
        if not packages:
            return None
        failed = self._failed.get(packages)
        if failed is not None and time.monotonic() - failed[0] < FAILURE_KEPT_SECONDS:
            raise PackageInstallError(failed[1])  # the same answer, without running pip again
        target = self.cache / set_hash(packages)
        if (target / COMPLETE_MARKER).is_file():
            return target
        try:
            self._install(packages, target)
        except PackageInstallError as exc:
            self._failed[packages] = (time.monotonic(), str(exc))
            raise
        return target

    def _install(self, packages: tuple[str, ...], target: Path) -> None:
        # Install next to the target, then rename: a worker killed mid-install leaves no
        # half environment that a later worker would take for complete.
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=self.cache))
        command = [
            sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
            "--no-warn-script-location", "--target", str(work), *packages,
        ]  # fmt: skip
        started = time.monotonic()
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_SECONDS,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(work, ignore_errors=True)
            raise PackageInstallError(
                f"pip could not install {', '.join(packages)}: no answer in "
                f"{INSTALL_TIMEOUT_SECONDS:g} s (is the package index reachable?)"
            ) from None
        if done.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise PackageInstallError(
                f"pip could not install {', '.join(packages)}: "
                f"{_last_error_line(done.stderr + chr(10) + done.stdout)}"
            )
        (work / COMPLETE_MARKER).write_text(json.dumps(list(packages)))
        try:
            work.rename(target)
        except OSError:  # another worker sharing the cache finished first: use theirs
            shutil.rmtree(work, ignore_errors=True)
            if not (target / COMPLETE_MARKER).is_file():
                raise
        self.installs += 1
        self._log(
            f"installed runtime packages {', '.join(packages)} into {target} "
            f"in {time.monotonic() - started:.1f}s"
        )


class ActiveEnvironment:
    """Which package environment is first on sys.path: the one of the task being served.

    Switching is the only time modules are dropped: those imported from the environment
    being left go from sys.modules, so that a task with another package set (another
    version of the same package) imports its own. Consecutive leases of one task (or of
    tasks with one set) keep their imports: pandas is imported once, not once per chunk."""

    def __init__(self) -> None:
        self.current: Path | None = None

    def switch(self, path: Path | None) -> None:
        if path == self.current:
            return
        if self.current is not None:
            entry = str(self.current)
            while entry in sys.path:
                sys.path.remove(entry)
            prefix = entry + os.sep
            for name, module in list(sys.modules.items()):
                if (getattr(module, "__file__", None) or "").startswith(prefix):
                    del sys.modules[name]
        if path is not None:
            sys.path.insert(0, str(path))
        importlib.invalidate_caches()
        self.current = path
