"""Container mode over files, from YAML: a shell program over files in S3, skipExisting, and
a failing file named in the task's status. The S3 server is the test cluster's SeaweedFS."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2ekit import NAMESPACE, REPO, Operator, PodWatch, apply, get_task, kubectl, wait_phase
from kubemap.stores import Store, open_store
from kubernetes import client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    pytest.mark.usefixtures("kubemap_installed"),
]

BUCKET = "s3://kubemap"
UPPER = 'tr a-z A-Z < "$KUBEMAP_INPUT_PATH" > "$KUBEMAP_OUTPUT_DIR/upper.txt"'


def manifest(name: str, root: str, command: str, **files: Any) -> dict[str, Any]:
    """examples/files-uppercase.yaml, pointed at this test's prefix."""
    body = yaml.safe_load((REPO / "examples" / "files-uppercase.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"]["files"].update(
        {"input": f"{BUCKET}/{root}/in/", "output": f"{BUCKET}/{root}/out/", **files}
    )
    body["spec"]["template"]["command"] = ["sh", "-c", command]
    return dict(body)


def delete_and_wait(custom: client.CustomObjectsApi, name: str) -> None:
    subprocess.run(
        [kubectl(), "delete", "mt", name, "-n", NAMESPACE, "--wait=true"],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 120
    while get_task(custom, name) is not None:
        assert time.monotonic() < deadline, f"MapTask {name} still there after 120 s"
        time.sleep(0.5)


def put_inputs(store: Store, names: list[str]) -> None:
    for name in names:
        store.put(name, f"hello from {name}\n".encode())


def workers(seen: set[str], task: str) -> set[str]:
    """The per-file pods the watch saw (not the listing pod)."""
    return {name for name in seen if not name.startswith(f"{task}-list-")}


def run_once(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    body: dict[str, Any],
    tmp_path: Path,
    phases: set[str] = frozenset({"Succeeded", "Failed"}),  # type: ignore[assignment]
) -> tuple[dict[str, Any], set[str]]:
    name = body["metadata"]["name"]
    with PodWatch(core, name) as pods:
        apply(body, tmp_path)
        done = wait_phase(custom, name, set(phases), timeout=400)
        time.sleep(1)  # the watch sees the last pods' events
    return done, workers(pods.seen, name)


def test_yaml_over_20_files_uploads_20_then_3_new_files_run_3(
    operator: Operator,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    root = unique("files")
    inputs = open_store(f"{BUCKET}/{root}/in")
    outputs = open_store(f"{BUCKET}/{root}/out")
    first = [f"f{i:02d}.txt" for i in range(18)] + ["deep/a.txt", "deep/er/b.txt"]
    put_inputs(inputs, [*first, "ignored.jpg"])  # the glob keeps .txt only
    name = unique("upper")
    body = manifest(name, root, UPPER)

    done, pods = run_once(core, custom, body, tmp_path)
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert (status["listed"], status["skipped"], status["total"]) == (20, 0, 20)
    assert status["succeeded"] == 20 and len(pods) == 20, sorted(pods)
    keys = sorted(outputs.list())
    assert keys == sorted(f"{n}/upper.txt" for n in first)
    assert outputs.get("deep/er/b.txt/upper.txt") == b"HELLO FROM DEEP/ER/B.TXT\n"
    # the MapTask stays small: no list of files in it
    assert len(yaml.safe_dump(done)) < 8192

    put_inputs(inputs, ["new1.txt", "new2.txt", "deep/new3.txt"])
    delete_and_wait(custom, name)
    done, pods = run_once(core, custom, body, tmp_path)
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert (status["listed"], status["skipped"], status["total"]) == (23, 20, 3)
    assert len(pods) == 3, sorted(pods)
    assert len(list(outputs.list())) == 23
    assert outputs.get("deep/new3.txt/upper.txt") == b"HELLO FROM DEEP/NEW3.TXT\n"


def test_a_program_failing_on_one_file_reports_its_index_and_name(
    operator: Operator,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    root = unique("files-bad")
    inputs = open_store(f"{BUCKET}/{root}/in")
    outputs = open_store(f"{BUCKET}/{root}/out")
    put_inputs(inputs, ["a.txt", "b.txt", "c.txt", "d.txt"])
    inputs.put("c.txt", b"this one is bad\n")
    program = (
        'if grep -q bad "$KUBEMAP_INPUT_PATH"; then echo "refusing a bad file" >&2; exit 2; fi; '
        + UPPER
    )
    name = unique("upper-bad")
    body = manifest(name, root, program)
    body["spec"]["minSuccessRatio"] = 0.5  # every file runs; one failure is tolerated
    done, pods = run_once(core, custom, body, tmp_path)
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["succeeded"] == 3 and status["failed"] == 1, status
    # c.txt is index 2: the listing is in key order
    assert status["failedIndexes"] == "2", status
    # The task's IndexFailed event names the index and the file, with the program's words.
    deadline = time.monotonic() + 30
    notes: list[str] = []
    while time.monotonic() < deadline and not notes:
        events = core.list_namespaced_event(
            NAMESPACE, field_selector=f"involvedObject.name={name}"
        ).items
        notes = [e.message for e in events if e.reason == "IndexFailed"]
        time.sleep(0.5)
    assert len(notes) == 1, notes
    assert notes[0].startswith("indices 2 failed"), notes
    assert "file c.txt: exit code 2: refusing a bad file" in notes[0], notes
    assert sorted(outputs.list()) == ["a.txt/upper.txt", "b.txt/upper.txt", "d.txt/upper.txt"]
    assert len(pods) == 4, sorted(pods)


@pytest.fixture
def restricted_namespace(core: client.CoreV1Api, unique: Callable[[str], str]) -> Iterator[str]:
    """A namespace enforcing the restricted Pod Security Standard, with the S3 Secret."""
    name = unique("files-pss")
    labels = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "warn")}
    core.create_namespace({"metadata": {"name": name, "labels": labels}})
    secret = core.read_namespaced_secret("kubemap-s3", NAMESPACE)
    core.create_namespaced_secret(
        name, {"metadata": {"name": "kubemap-s3"}, "type": secret.type, "data": secret.data}
    )
    yield name
    core.delete_namespace(name)


def test_files_pods_pass_the_restricted_pod_security_standard(
    operator: Operator,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    restricted_namespace: str,
    unique: Callable[[str], str],
) -> None:
    root = unique("files-pss")
    put_inputs(open_store(f"{BUCKET}/{root}/in"), ["a.txt", "b.txt"])
    body = manifest(unique("upper-pss"), root, UPPER)
    custom.create_namespaced_custom_object(
        "kubemap.io", "v1alpha1", restricted_namespace, "maptasks", body
    )
    name = body["metadata"]["name"]
    deadline = time.monotonic() + 240
    status: dict[str, Any] = {}
    while time.monotonic() < deadline and status.get("phase") not in ("Succeeded", "Failed"):
        time.sleep(0.5)
        got = custom.get_namespaced_custom_object(
            "kubemap.io", "v1alpha1", restricted_namespace, "maptasks", name
        )
        status = dict(got.get("status") or {})
    # Admission refuses a pod that breaks the standard: the task would never get its pods.
    assert status.get("phase") == "Succeeded" and status.get("succeeded") == 2, status
    assert sorted(open_store(f"{BUCKET}/{root}/out").list()) == [
        "a.txt/upper.txt",
        "b.txt/upper.txt",
    ]


def test_a_listing_that_cannot_read_its_input_fails_the_task_with_the_cause(
    operator: Operator,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = unique("no-bucket")
    body = manifest(name, "x", UPPER)
    body["spec"]["files"]["input"] = f"s3://{unique('missing-bucket')}/in/"
    done, pods = run_once(core, custom, body, tmp_path)
    status = done["status"]
    assert status["phase"] == "Failed", status
    assert "listing spec.files failed" in status["message"], status
    assert "missing-bucket" in status["message"], status
    assert not pods  # no file pod ran
    assert status.get("listed") is None


def test_kubectl_annotate_reruns_the_failed_file_after_the_file_is_fixed(
    operator: Operator,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    root = unique("files-fix")
    inputs = open_store(f"{BUCKET}/{root}/in")
    outputs = open_store(f"{BUCKET}/{root}/out")
    put_inputs(inputs, ["a.txt"])
    inputs.put("b.txt", b"bad\n")
    program = 'if grep -q bad "$KUBEMAP_INPUT_PATH"; then exit 2; fi; ' + UPPER
    name = unique("upper-fix")
    done, _ = run_once(core, custom, manifest(name, root, program), tmp_path)
    assert done["status"]["phase"] == "Failed" and "1" in done["status"]["failedIndexes"]
    inputs.put("b.txt", b"now it is fine, and longer than before\n")  # the fix
    with PodWatch(core, name) as pods:
        subprocess.run(
            [kubectl(), "annotate", "mt", name, "-n", NAMESPACE, "kubemap.io/retry=1"],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 240
        while True:
            status = (get_task(custom, name) or {}).get("status") or {}
            if status.get("retryToken") == "1" and status.get("phase") in ("Succeeded", "Failed"):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
    assert status["phase"] == "Succeeded" and status["succeeded"] == 2, status
    assert status["listed"] == 2  # the rerun keeps the listing: nothing listed again
    assert f"{name}-1-1" in pods.seen and not any(p.startswith(f"{name}-list-") for p in pods.seen)
    assert outputs.get("b.txt/upper.txt") == b"NOW IT IS FINE, AND LONGER THAN BEFORE\n"
    assert sorted(outputs.list()) == ["a.txt/upper.txt", "b.txt/upper.txt"]
