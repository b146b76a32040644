"""Runtime packages of pool workers: validation, one environment per set, permanent failures.

pip itself is replaced here by a fake subprocess (fast suite); the real install from the
package index runs in tests/e2e/test_pool_packages.py on the test cluster."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubemap.core.status import Phase
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus, Mode, StoreRef
from kubemap.resources.options import RunOptions
from kubemap.resources.requirements import check_packages
from kubemap.resources.workerpool import WorkerPoolSpec
from kubemap.runtime import packages as poolpackages
from kubemap.runtime.packages import (
    COMPLETE_MARKER,
    ActiveEnvironment,
    Environments,
    PackageInstallError,
    package_set,
    pool_packages,
    set_hash,
)
from kubemap.runtime.poolworker import FunctionCache, Runtime, run_lease
from kubemap_operator.pools.builder import deployment
from kubemap_operator.pools.dispatch import Dispatcher
from kubemap_operator.settings import Settings
from pydantic import ValidationError


@pytest.mark.parametrize(
    "good", ["tomli_w", "pandas==2.2.*", "foo[bar]>=1,<2", "six; python_version > '3'"]
)
def test_pip_requirements_are_accepted(good: str) -> None:
    assert check_packages([good]) == [good]


@pytest.mark.parametrize("bad", ["", "--index-url=http://evil", "-e .", " ", "a\nb", "x" * 201])
def test_options_and_junk_are_refused_with_what_to_do(bad: str) -> None:
    with pytest.raises(ValueError, match="not a pip requirement"):
        check_packages([bad])


def test_packages_need_a_pool_locally_and_in_pod_mode() -> None:
    with pytest.raises(ValidationError, match="warm pool workers"):
        RunOptions(packages=["six"])  # local backend
    with pytest.raises(ValidationError, match="warm pool workers"):
        MapTaskSpec(mode=Mode.FUNCTION, count=1, store=StoreRef(url="s3://b/p"), packages=["six"])
    assert RunOptions(backend="kubernetes", pool="p", packages=["six"]).packages == ["six"]
    with pytest.raises(ValidationError, match=r"spec\.packages"):
        WorkerPoolSpec(packages=["--pre"])


def test_one_environment_per_sorted_set() -> None:
    assert package_set(["b", "a"], None, ["a "]) == ("a", "b")
    assert set_hash(package_set(["b", "a"])) == set_hash(package_set(["a", "b"]))
    assert set_hash(("a",)) != set_hash(("a", "b"))
    assert pool_packages({"KUBEMAP_POOL_PACKAGES": '["z", "y"]'}) == ("y", "z")
    assert pool_packages({}) == ()


class FakePip:
    """Stands in for `python -m pip install --target DIR ...`: writes a module, or fails."""

    def __init__(self, fail: str | None = None) -> None:
        self.runs: list[list[str]] = []
        self.fail = fail

    def __call__(self, command: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.runs.append(command)
        if self.fail:
            return subprocess.CompletedProcess(command, 1, "", f"Collecting x\n{self.fail}\n")
        target = Path(command[command.index("--target") + 1])
        (target / "kubemap_fakepkg.py").write_text("VALUE = 42\n")
        return subprocess.CompletedProcess(command, 0, "", "")


def test_a_set_is_installed_once_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pip = FakePip()
    monkeypatch.setattr(subprocess, "run", pip)
    envs = Environments(tmp_path)
    first = envs.path(("kubemap_fakepkg",))
    assert first is not None and (first / COMPLETE_MARKER).is_file()
    assert envs.path(("kubemap_fakepkg",)) == first
    assert Environments(tmp_path).path(("kubemap_fakepkg",)) == first  # a restarted worker too
    assert len(pip.runs) == 1 and envs.installs == 1
    assert pip.runs[0][:4] == [sys.executable, "-m", "pip", "install"]
    assert envs.path(()) is None


def test_a_failed_install_says_what_pip_said_and_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pip = FakePip(fail="ERROR: No matching distribution found for pandas==9.9")
    monkeypatch.setattr(subprocess, "run", pip)
    envs = Environments(tmp_path)
    for _ in range(3):
        with pytest.raises(PackageInstallError) as err:
            envs.path(("pandas==9.9",))
        assert str(err.value) == (
            "pip could not install pandas==9.9: ERROR: No matching distribution found for "
            "pandas==9.9"
        )
    assert len(pip.runs) == 1
    assert list(tmp_path.iterdir()) == []  # no half environment left behind
    monkeypatch.setattr(poolpackages, "FAILURE_KEPT_SECONDS", 0.0)  # later: pip is asked again
    with pytest.raises(PackageInstallError):
        envs.path(("pandas==9.9",))
    assert len(pip.runs) == 2


def test_the_active_environment_is_on_sys_path_and_its_modules_go_on_a_switch(
    tmp_path: Path,
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for d, value in ((one, 1), (two, 2)):
        d.mkdir()
        (d / "kubemap_switchpkg.py").write_text(f"VALUE = {value}\n")
    active = ActiveEnvironment()
    try:
        active.switch(one)
        import kubemap_switchpkg  # type: ignore[import-not-found]

        assert kubemap_switchpkg.VALUE == 1
        active.switch(one)  # same set: the import is kept
        assert sys.modules["kubemap_switchpkg"] is kubemap_switchpkg
        active.switch(two)
        assert str(one) not in sys.path and "kubemap_switchpkg" not in sys.modules
        import kubemap_switchpkg as again  # type: ignore[import-not-found]

        assert again.VALUE == 2
    finally:
        active.switch(None)
    assert str(two) not in sys.path and "kubemap_switchpkg" not in sys.modules


def test_an_install_failure_is_a_usage_report_that_fails_the_task_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        subprocess, "run", FakePip(fail="ERROR: No matching distribution found for pandas==9.9")
    )
    runtime = Runtime({"KUBEMAP_PACKAGE_CACHE": str(tmp_path)})
    grant = {
        "lease_id": "t/0-0",
        "task_url": "s3://b/p/t",
        "start": 0,
        "count": 5,
        "attempt": 0,
        "packages": ["pandas==9.9"],
    }
    body = run_lease(grant, FunctionCache(), runtime=runtime)
    assert body["kind"] == "usage" and "pip could not install pandas==9.9" in body["why"]
    # The dispatcher fails the task with the worker's words, whatever the retry budget.
    dispatcher = Dispatcher()
    spec = MapTaskSpec(
        mode=Mode.FUNCTION, count=5, store=StoreRef(url="s3://b/p"), pool="p",
        backoff_limit_per_index=3, packages=["pandas==9.9"],
    )  # fmt: skip
    dispatcher.sync(("ns", "t"), "u", spec, MapTaskStatus(), "s3://b/p/t", "3.11", 1)
    got = asyncio.run(dispatcher.lease(("ns", "p"), "w", "3.11", 0))
    assert got is not None and got.packages == ("pandas==9.9",)
    from kubemap_operator.tasks.observe import WorkerReport

    dispatcher.report(("ns", "p"), got.lease_id, "usage", WorkerReport(error=body["why"]))
    status = dispatcher.tasks[("ns", "t")].status
    assert status.phase is Phase.FAILED
    assert "pip could not install pandas==9.9: ERROR: No matching distribution" in (
        status.message or ""
    )
    assert asyncio.run(dispatcher.lease(("ns", "p"), "w", "3.11", 0)) is None  # no retry loop


def test_pool_packages_reach_the_workers_env_and_the_cache_is_an_empty_dir() -> None:
    spec = WorkerPoolSpec(
        packages=["tomli_w", "six"], env=[{"name": "PIP_INDEX_URL", "value": "http://idx"}]
    )
    body = deployment("ns", "p", "uid", spec, 2, Settings(dispatcher_url="http://d"))
    pod = body["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KUBEMAP_POOL_PACKAGES"] == '["six", "tomli_w"]'
    assert env["PIP_INDEX_URL"] == "http://idx"
    assert env["KUBEMAP_PACKAGE_CACHE"] == "/var/cache/kubemap-packages"
    assert pod["volumes"] == [{"name": "packages", "emptyDir": {}}]
    overridden = WorkerPoolSpec(
        env=[
            {"name": "KUBEMAP_PACKAGE_CACHE", "value": "here"},
            {"name": "KUBEMAP_POOL_TOKEN", "value": "stolen"},
        ]
    )
    pod = deployment("ns", "p", "uid", overridden, 1, Settings())["spec"]["template"]["spec"]
    names = [e["name"] for e in pod["containers"][0]["env"]]
    assert names.count("KUBEMAP_PACKAGE_CACHE") == 1 and names.count("KUBEMAP_POOL_TOKEN") == 1
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["KUBEMAP_PACKAGE_CACHE"]["value"] == "here"
    assert "valueFrom" in env["KUBEMAP_POOL_TOKEN"]  # the pool's env cannot replace the token


def test_the_operators_package_index_reaches_the_workers_unless_the_pool_sets_one() -> None:
    settings = Settings.from_env(
        {"PIP_INDEX_URL": "http://cluster-index/simple", "PIP_TRUSTED_HOST": "cluster-index"}
    )
    assert dict(settings.pip_env) == {
        "PIP_INDEX_URL": "http://cluster-index/simple",
        "PIP_TRUSTED_HOST": "cluster-index",
    }
    plain = WorkerPoolSpec(packages=["six"])
    pod = deployment("ns", "p", "uid", plain, 1, settings)["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["PIP_INDEX_URL"] == "http://cluster-index/simple"
    own = WorkerPoolSpec(env=[{"name": "PIP_INDEX_URL", "value": "http://mine/simple"}])
    pod = deployment("ns", "p", "uid", own, 1, settings)["spec"]["template"]["spec"]
    env_list = pod["containers"][0]["env"]
    assert [e["value"] for e in env_list if e["name"] == "PIP_INDEX_URL"] == ["http://mine/simple"]
