"""`kubemap get/list/results/logs/cancel` against a real API server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import kubemap
import pytest
import yaml
from click.testing import CliRunner
from e2ekit import NAMESPACE, REPO, Operator, apply, get_task, wait_phase
from kubemap.cli.main import main
from kubemap.contract import ANNOTATION_RETRY, STATUS_KEY
from kubemap.stores import open_store
from kubernetes import client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("kubemap_installed"),
]


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [*args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_get_list_results_logs_cancel(operator: Operator, unique: Callable[[str], str]) -> None:
    def half(x: int) -> float:
        if x == 3:
            raise ArithmeticError("three is not welcome")
        return x / 2

    store = os.environ["KUBEMAP_STORE"]
    name = unique("cli")
    run = kubemap.submit(
        half,
        range(5),
        backend="kubernetes",
        namespace=NAMESPACE,
        store=store,
        name=name,
        min_success_ratio=0.5,
    )
    run.wait(timeout=120)

    code, out, _ = cli("get", name, "-n", NAMESPACE)
    assert (
        code == 0
        and "phase:       Succeeded" in out
        and "4/5 succeeded, 1 failed, 0 not run" in out  # the same three counts everywhere
        and "failed:      3" in out
        and "reason:      Completed" in out
    )

    code, out, _ = cli("list", "-n", NAMESPACE)
    row = next(line for line in out.splitlines() if line.startswith(name))
    # NAME, WHERE, MODE, PHASE, SUCCEEDED, FAILED, NOT-RUN
    assert row.split()[1:7] == ["kubernetes", "Function", "Succeeded", "4/5", "1", "0"]

    code, out, err = cli("results", name, "-n", NAMESPACE)
    assert code == 0  # the task Succeeded: its one failure is tolerated, as `kubemap run` says
    assert [json.loads(line) for line in out.splitlines()] == [0.0, 0.5, 1.0, None, 2.0]
    assert "1 of 5 inputs failed (tolerated" in err and "4 succeeded, 1 failed, 0 not run" in err
    assert "index 3: ArithmeticError: three is not welcome" in err and "Traceback" not in err
    code, _, err = cli("results", name, "-n", NAMESPACE, "--verbose")
    assert code == 0 and "Traceback" in err

    code, out, err = cli("logs", name, "--index", "3", "-n", NAMESPACE)
    assert f"==> {name}-3-0 (index 3, attempt 0) <==" in out  # the failed pod is kept
    # The test cluster's node serves pods/log (as kind does): the worker's own words, decoded,
    # not the repr of bytes that kubernetes-client 36 makes of a log (#2596).
    assert code == 0, err
    assert "three is not welcome" in out and "b'" not in out, out

    code, _, err = cli("get", "no-such-task", "-n", NAMESPACE)
    assert code == 1 and "no MapTask 'no-such-task'" in err

    def slow(x: int) -> int:
        time.sleep(60)
        return x

    other = unique("cli-cancel")
    run = kubemap.submit(
        slow, range(3), backend="kubernetes", namespace=NAMESPACE, store=store, name=other
    )
    code, out, _ = cli("cancel", other, "-n", NAMESPACE)
    assert code == 0 and f"maptask {other} cancelled" in out
    assert run.wait(timeout=60).phase.value == "Cancelled"


def fails_on_one(x: int) -> int:
    if x == 1:
        raise ValueError("one is never right")
    return x


def test_retry_of_a_cluster_task_reruns_it_on_the_cluster(
    custom: client.CustomObjectsApi, operator: Operator, unique: Callable[[str], str]
) -> None:
    # The hint a failed cluster run prints is `kubemap retry NAME`: with KUBEMAP_STORE on
    # the task's S3 store (as here), that once reran the task on this machine.
    name = unique("cli-retry")
    run = kubemap.submit(
        fails_on_one, range(3), backend="kubernetes", namespace=NAMESPACE, name=name
    )
    assert run.wait(timeout=120).phase.value == "Failed"
    code, _, err = cli("retry", name)
    body = get_task(custom, name)
    assert body is not None
    token = (body["metadata"].get("annotations") or {}).get(ANNOTATION_RETRY)
    assert token and f"MapTask {name}: rerunning" in err, err  # the operator was asked
    assert (body.get("status") or {}).get("retryToken") == token  # and honoured it
    assert not open_store(run.store_url).exists(STATUS_KEY)  # no local run wrote its record
    assert code == 1 and "Failed" in err and "index 1" in err  # index 1 fails on the cluster too
    assert "2 succeeded, 1 failed, 0 not run" in err
    # The local rerun's options do not reach the operator: said, not silently dropped.
    code, _, err = cli("retry", name, "--min-success-ratio", "0")
    assert "note: --min-success-ratio apply to tasks run on this machine" in err
    assert code == 1 and "2 succeeded, 1 failed, 0 not run" in err  # the spec's ratio, 1


def test_a_name_in_both_places_asks_which(
    operator: Operator, unique: Callable[[str], str], tmp_path: Path
) -> None:
    name = unique("cli-both")
    kubemap.submit(fails_on_one, [0], store=str(tmp_path), name=name).wait()  # on this machine
    kubemap.submit(fails_on_one, [0, 2], backend="kubernetes", namespace=NAMESPACE, name=name).wait(
        timeout=120
    )
    code, _, err = cli("get", name, "--store", str(tmp_path))
    assert code == 1 and "names two tasks" in err
    assert "--backend local" in err and "--backend kubernetes" in err
    code, out, _ = cli("get", name, "--store", str(tmp_path), "--backend", "local")
    assert code == 0 and "where:       local" in out and "1/1 succeeded" in out
    code, out, _ = cli("get", name, "--backend", "kubernetes")
    assert code == 0 and "where:       kubernetes" in out and "2/2 succeeded" in out
    code, out, _ = cli("list", "--store", str(tmp_path))
    wheres = sorted(line.split()[1] for line in out.splitlines() if line.startswith(name))
    assert code == 0 and wheres == ["kubernetes", "local"]


def test_get_of_a_files_task_shows_what_its_listing_found(
    custom: client.CustomObjectsApi,
    operator: Operator,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    root = unique("cli-files")
    inputs = open_store(f"s3://kubemap/{root}/in")
    for key in ("a.txt", "b.txt", "skip.jpg"):
        inputs.put(key, b"hello\n")
    body = yaml.safe_load((REPO / "examples" / "files-uppercase.yaml").read_text())
    name = unique("cli-upper")
    body["metadata"]["name"] = name
    body["spec"]["files"].update(
        {"input": f"s3://kubemap/{root}/in/", "output": f"s3://kubemap/{root}/out/"}
    )
    apply(body, tmp_path)
    done = wait_phase(custom, name, {"Succeeded", "Failed"}, timeout=400)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    code, out, _ = cli("get", name, "-n", NAMESPACE)
    assert code == 0 and "files:       2 listed, 0 skipped" in out, out
