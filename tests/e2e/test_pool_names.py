"""Pool names as a user types them (issue 18 #18): a run on a pool that does not exist makes
it and says so (its size, how to delete it); `kubemap pool delete` of a pool that does not
exist fails, naming the namespace and `kubemap pool list`. Run through the CLI and the SDK
against the test cluster; the pools are counted through the API."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import kubemap
import pytest
from e2ekit import NAMESPACE
from kubemap.backends.kubernetes.client import Cluster
from kubemap.backends.kubernetes.workerpools import list_pools

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("kubemap_installed"),
]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubemap", *args], capture_output=True, text=True, cwd=cwd,
        env=os.environ.copy(), timeout=240,
    )  # fmt: skip


def pools() -> set[str]:
    """The pools in the namespace, less those being deleted (the operator's finalizer)."""
    found = list_pools(Cluster.connect(NAMESPACE))
    return {p["metadata"]["name"] for p in found if not p["metadata"].get("deletionTimestamp")}


def test_deleting_a_pool_that_does_not_exist_fails_and_says_where_it_looked(
    unique: Callable[[str], str],
) -> None:
    name = unique("nosuch")
    before = pools()
    done = cli("pool", "delete", name, "--namespace", NAMESPACE)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "deleted" not in done.stdout, done.stdout
    for words in (name, NAMESPACE, "kubemap pool list"):
        assert words in done.stderr, (words, done.stderr)
    assert pools() == before


def test_a_run_that_creates_its_pool_says_so_and_the_pool_deletes_by_that_advice(
    unique: Callable[[str], str], tmp_path: Path
) -> None:
    name = unique("scorrers")  # a typo of an existing pool's name, as the user sees it
    fns = tmp_path / "fns.py"
    fns.write_text("def square(x):\n    return x * x\n")
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("1\n2\n3\n")
    try:
        run = cli(
            "run", f"{fns}:square", "--inputs", str(inputs), "--format", "jsonl",
            "--backend", "kubernetes", "--namespace", NAMESPACE, "--pool", name, "--no-progress",
            cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["1", "4", "9"]
        assert name in pools()
        said = run.stderr
        for words in (f"WorkerPool {name!r}", "4 workers", f"kubemap pool delete {name} -n "):
            assert words in said, (words, said)

        with warnings.catch_warnings(record=True) as caught:  # the pool exists now: no word
            warnings.simplefilter("always")
            again = kubemap.map(
                abs, [-5], backend="kubernetes", namespace=NAMESPACE, pool=name,
                store=os.environ.get("KUBEMAP_STORE"),
            )  # fmt: skip
        assert again == [5]
        assert [str(w.message) for w in caught if "created it" in str(w.message)] == []
    finally:
        gone = cli("pool", "delete", name, "--namespace", NAMESPACE)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.strip() == f"workerpool {name} deleted from {NAMESPACE}"
    assert name not in pools()


def test_the_sdk_warns_with_a_category_a_user_can_filter(unique: Callable[[str], str]) -> None:
    from kubemap.backends.kubernetes.workerpools import PoolCreatedWarning

    name = unique("made")
    try:
        with pytest.warns(PoolCreatedWarning, match=f"kubemap pool delete {name} -n {NAMESPACE}"):
            run = kubemap.submit(
                abs, [-1, -2], backend="kubernetes", namespace=NAMESPACE, pool=name,
                store=os.environ.get("KUBEMAP_STORE"), parallelism=2,
            )  # fmt: skip
        assert run.results() == [1, 2]
    finally:
        kubemap.WorkerPool(name, namespace=NAMESPACE).delete(missing_ok=True)
    assert name not in pools()
