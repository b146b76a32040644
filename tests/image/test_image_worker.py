"""The built image runs a real function-mode slice: the worker inside the container reads a
task from a file store mounted into it, runs the function, and writes results and error
records that the host then reads back. Read-only root filesystem, no network, uid 10001.

Needs the image (``scripts/image`` builds it) and podman or docker. ``scripts/test`` runs
this right after building the image, with KUBEMAP_IMAGE_REQUIRED=1 so that a missing image
fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubemap.contract import ENV_COUNT, ENV_INDEX, ENV_TASK_URL, ENV_TOTAL
from kubemap.stores import open_store
from kubemap.task import data as taskdata
from kubemap.task.meta import TaskMeta, write_meta

IMAGE = os.environ.get("IMAGE", "kubemap:dev")
REQUIRED = os.environ.get("KUBEMAP_IMAGE_REQUIRED") == "1"


def _runner() -> str:
    for tool in ("podman", "docker"):
        path = shutil.which(tool)
        if (
            path
            and subprocess.run([path, "image", "inspect", IMAGE], capture_output=True).returncode
            == 0
        ):
            return path
    reason = f"no podman or docker that has the image {IMAGE}; build it with scripts/image"
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def runner() -> str:
    return _runner()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    conf = Path(os.environ.get("KUBEMAP_IMAGE_CACHE") or Path.home() / ".cache/kubemap-image")
    if (conf / "containers.conf").is_file():  # runc and ulimits that this host allows
        env.setdefault("CONTAINERS_CONF", str(conf / "containers.conf"))
    return env


def _submit(root: Path, fn: Any, items: list[Any]) -> str:
    url = (root / "task").as_uri()
    store = open_store(url)
    taskdata.write_function(store, fn)
    assert taskdata.write_inputs(store, items) == len(items)
    # task.json records the SDK's Python: the worker refuses a task pickled by another minor.
    write_meta(store, TaskMeta.new(len(items), getattr(fn, "__qualname__", "fn")))
    for dirpath, _, _ in os.walk(root):  # results/ and errors/ are created by uid 10001
        Path(dirpath).chmod(0o777)
    return url


def _run_worker(
    runner: str, root: Path, url: str, start: int, count: int, total: int
) -> subprocess.CompletedProcess[str]:
    in_container = url.replace(root.as_uri(), "file:///data", 1)
    return subprocess.run(
        [
            runner,
            "run",
            "--rm",
            "--network=none",
            "--read-only",
            f"--volume={root}:/data",
            f"--env={ENV_TASK_URL}={in_container}",
            f"--env={ENV_INDEX}={start}",
            f"--env={ENV_COUNT}={count}",
            f"--env={ENV_TOTAL}={total}",
            "--env=KUBEMAP_TERMINATION_LOG=/data/termination-log",
            IMAGE,
            "python",
            "-m",
            "kubemap.worker",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=180,
    )


def test_worker_in_the_image_runs_a_slice_and_writes_results(runner: str, tmp_path: Path) -> None:
    def square(x: int) -> int:  # nested: cloudpickle ships it by value, as the SDK does
        return x * x

    url = _submit(tmp_path, square, list(range(10)))
    run = _run_worker(runner, tmp_path, url, 2, 5, 10)
    assert run.returncode == 0, run.stderr
    results = dict(taskdata.iter_results(open_store(url)))
    assert results == {i: i * i for i in range(2, 7)}
    assert "5 succeeded, 0 failed" in run.stderr


def test_worker_in_the_image_records_the_error_of_a_failing_index(
    runner: str, tmp_path: Path
) -> None:
    def fragile(x: int) -> int:
        if x == 3:
            raise ValueError(f"bad item {x}")
        return x

    url = _submit(tmp_path, fragile, list(range(5)))
    run = _run_worker(runner, tmp_path, url, 0, 5, 5)
    assert run.returncode == 3, run.stderr  # EXIT_USER_ERROR
    store = open_store(url)
    assert sorted(dict(taskdata.iter_results(store))) == [0, 1, 2, 4]
    errors = taskdata.read_errors(store)
    assert list(errors) == [3]
    assert "bad item 3" in str(errors[3])
    assert "ValueError" in run.stderr
