"""spec.files (container mode over files): naming, cache keys, the pod layout, the listing
step's decisions, and the three pod commands against a local store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubemap.resources import filemode as filetask
from kubemap.resources.maptask import MapTaskSpec, MapTaskStatus
from kubemap.runtime import filetransfer as filepod
from kubemap.stores import open_store
from kubemap.task import data as taskdata
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.builder import TaskRef, build_lister_pod, build_pod
from kubemap_operator.tasks.filelisting import listing_outcome
from kubemap_operator.tasks.observe import observe_pod
from kubemap_operator.tasks.planner import PodRequest
from pydantic import ValidationError

TASK = TaskRef("upper", "default", "uid-1")
SETTINGS = Settings(
    default_store="s3://kubemap/tasks", s3_endpoint="http://127.0.0.1:8333", worker_image="km:t"
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
FILES = {"input": "s3://kubemap/in/", "glob": "**/*.txt", "output": "s3://kubemap/out/"}
TEMPLATE = {"image": "busybox", "command": ["sh", "-c", "tr a-z A-Z < $KUBEMAP_INPUT_PATH"]}


def spec(**files: Any) -> MapTaskSpec:
    return MapTaskSpec.model_validate({"files": {**FILES, **files}, "template": TEMPLATE})


@pytest.mark.parametrize(
    ("base", "key", "name"),
    [
        ("in", "in/a.txt", "a.txt"),
        ("in", "in/deep/er/b.txt", "deep/er/b.txt"),
        ("", "top.txt", "top.txt"),
        ("data/in", "data/in/x/y.jpg", "x/y.jpg"),
        ("in", "in2/z.txt", "2/z.txt"),  # a prefix that is not a directory: what follows it
    ],
)
def test_item_names_are_keys_below_the_input(base: str, key: str, name: str) -> None:
    assert filetask.relative_name(base, key) == name


def test_input_base_of_urls() -> None:
    assert filepod.input_base("s3://kubemap/in/") == "in"
    assert filepod.input_base("file:///data/in") == "data/in"
    assert filepod.input_base("s3://kubemap") == ""


def test_program_id_follows_what_decides_the_output() -> None:
    base = spec()
    same = filetask.program_id(base.files, base.template)  # type: ignore[arg-type]
    assert same == filetask.program_id(spec().files, spec().template)  # type: ignore[arg-type]
    bumped = spec(version="2")
    other_cmd = MapTaskSpec.model_validate(
        {"files": FILES, "template": {**TEMPLATE, "command": ["sh", "-c", "cat"]}}
    )
    ids = {
        same,
        filetask.program_id(bumped.files, bumped.template),  # type: ignore[arg-type]
        filetask.program_id(other_cmd.files, other_cmd.template),  # type: ignore[arg-type]
        filetask.program_id(spec(output="s3://kubemap/o2/").files, base.template),  # type: ignore[arg-type]
    }
    assert len(ids) == 4
    # skipExisting itself is no part of the key: turning it on reuses what ran before
    assert filetask.program_id(spec(skipExisting=True).files, base.template) == same  # type: ignore[arg-type]


def test_item_digest_changes_with_the_file() -> None:
    a = filetask.item_digest("a.txt", 3, "etag1")
    assert a == filetask.item_digest("a.txt", 3, "etag1")
    assert (
        len({a, filetask.item_digest("a.txt", 4, "etag1"), filetask.item_digest("a.txt", 3, "e2")})
        == 3
    )


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"count": 3}, "files or count"),
        ({"items": ["a"]}, "files or items"),
        ({"itemsPerPod": 2}, "one file per pod"),
        ({"mode": "Function", "store": {"url": "s3://b/t"}}, "Container mode"),
        ({"template": {"image": "busybox"}}, "template.command"),
    ],
)
def test_bad_files_specs_are_refused_with_the_fix(extra: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        MapTaskSpec.model_validate({"files": FILES, "template": TEMPLATE, **extra})


def test_files_pod_is_fetch_program_upload_sharing_an_empty_dir() -> None:
    listed = spec(skipExisting=True).model_copy(update={"count": 20})
    pod = build_pod(TASK, listed, PodRequest(7, 1, attempt=0, failures=0), SETTINGS)
    inits, mains = pod["spec"]["initContainers"], pod["spec"]["containers"]
    assert [c["name"] for c in inits] == ["kubemap-fetch", "worker"]
    assert [c["name"] for c in mains] == ["kubemap-upload"]
    assert inits[0]["command"][-1] == "fetch" and mains[0]["command"][-1] == "upload"
    assert inits[0]["image"] == mains[0]["image"] == "km:t" and inits[1]["image"] == "busybox"
    assert inits[1]["command"] == TEMPLATE["command"]
    assert pod["spec"]["volumes"] == [{"name": "kubemap-files", "emptyDir": {}}]
    for container in (*inits, *mains):
        assert container["volumeMounts"][0]["mountPath"] == "/kubemap"
        # restricted Pod Security Standard, container by container
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["runAsNonRoot"] is True
        assert ctx["capabilities"] == {"drop": ["ALL"]}
    program_env = {e["name"]: e.get("value") for e in inits[1]["env"]}
    assert program_env["KUBEMAP_INPUT_PATH"] == "/kubemap/input/file"
    assert program_env["KUBEMAP_OUTPUT_DIR"] == "/kubemap/output"
    assert program_env["KUBEMAP_INDEX"] == "7"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KUBEMAP_TASK_URL"} & set(program_env)
    upload_env = {e["name"]: e.get("value", e.get("valueFrom")) for e in mains[0]["env"]}
    assert upload_env["KUBEMAP_TASK_URL"] == "s3://kubemap/tasks/upper"
    assert upload_env["KUBEMAP_FILES_OUTPUT"] == "s3://kubemap/out/"
    assert upload_env["KUBEMAP_FILES_CACHE_URL"].startswith("s3://kubemap/tasks/_cache/files/")
    assert "secretKeyRef" in upload_env["AWS_ACCESS_KEY_ID"]


def test_lister_pod_is_no_attempt_of_any_index() -> None:
    pod = build_lister_pod(TASK, spec(), SETTINGS)
    assert pod["metadata"]["name"] == "upper-list-0"
    assert build_lister_pod(TASK, spec(), SETTINGS, 2)["metadata"]["name"] == "upper-list-2"
    long = build_lister_pod(TaskRef("x" * 63, "default", "u"), spec(), SETTINGS, 1)
    assert len(long["metadata"]["name"]) <= 63 and long["metadata"]["name"].endswith("-list-1")
    assert "kubemap.io/index" not in pod["metadata"]["labels"]
    assert pod["metadata"]["labels"]["kubemap.io/task"] == "upper"
    assert observe_pod(pod, NOW) is None
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert (
        env["KUBEMAP_FILES_INPUT"] == "s3://kubemap/in/" and env["KUBEMAP_FILES_GLOB"] == "**/*.txt"
    )
    assert "KUBEMAP_FILES_CACHE_URL" not in env  # skipExisting off


def _pod(phase: str | None, message: str = "", code: int = 0, attempt: int = 0) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase} if phase else {}
    if phase in ("Succeeded", "Failed"):
        status["containerStatuses"] = [
            {
                "name": "kubemap-list",
                "state": {"terminated": {"exitCode": code, "message": message}},
            }
        ]
    meta = {"name": f"upper-list-{attempt}", "annotations": {"kubemap.io/attempt": str(attempt)}}
    return {"metadata": meta, "status": status}


def test_listing_outcomes() -> None:
    empty = MapTaskStatus()
    assert listing_outcome(None, empty, NOW) == ("create", None)
    assert listing_outcome(_pod("Running"), empty, NOW) == ("wait", None)
    action, patch = listing_outcome(_pod("Succeeded", filetask.listing_line(20, 3)), empty, NOW)
    assert action == "record" and patch is not None
    assert (patch["listed"], patch["skipped"], patch["total"]) == (20, 3, 17)
    # the store failed it: listed again, twice; then the task fails with the last words
    assert listing_outcome(_pod("Failed", "timeout", 4), empty, NOW) == ("retry", None)
    assert listing_outcome(_pod("Failed", "timeout", 4, attempt=1), empty, NOW) == ("retry", None)
    last = _pod("Failed", "AccessDenied on kubemap", 4, attempt=2)
    action, patch = listing_outcome(last, empty, NOW)
    assert action == "record" and patch is not None and patch["phase"] == "Failed"
    assert "AccessDenied" in patch["message"] and "exit code 4" in patch["message"]
    assert patch["conditions"][0]["reason"] == "InfrastructureError"
    # a usage error (exit code 5: a bad input URL) is not retried
    action, patch = listing_outcome(_pod("Failed", "bad pattern", 5), empty, NOW)
    assert patch is not None and patch["conditions"][0]["reason"] == "UsageError"


def test_a_failed_program_names_its_file() -> None:
    listed = spec().model_copy(update={"count": 5})
    pod = build_pod(TASK, listed, PodRequest(3, 1, attempt=0, failures=0), SETTINGS)
    pod["status"] = {
        "phase": "Failed",
        "initContainerStatuses": [
            {
                "name": "kubemap-fetch",
                "state": {"terminated": {"exitCode": 0, "message": '{"file": "d/c.txt"}'}},
            },
            {
                "name": "worker",
                "state": {"terminated": {"exitCode": 2, "message": "tr: bad input\n"}},
            },
        ],
        "containerStatuses": [
            {"name": "kubemap-upload", "state": {"waiting": {"reason": "PodInitializing"}}}
        ],
    }
    seen = observe_pod(pod, NOW)
    assert seen is not None and seen.exit_code == 2
    assert seen.report is not None and list(seen.report.failed) == [3]
    assert seen.report.error == "file d/c.txt: exit code 2: tr: bad input"


# -- the pod commands against a local store ---------------------------------------------------
def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "KUBEMAP_TASK_URL": f"file://{tmp_path}/store/t1",
        "KUBEMAP_FILES_INPUT": f"file://{tmp_path}/in/",
        "KUBEMAP_FILES_GLOB": "**/*.txt",
        "KUBEMAP_FILES_OUTPUT": f"file://{tmp_path}/out",
        "KUBEMAP_TERMINATION_LOG": str(tmp_path / "term"),
        **more,
    }


def test_list_fetch_upload_roundtrip_writes_once_and_skips_done(tmp_path: Path) -> None:
    for rel in ("a.txt", "sub/b.txt", "skip.jpg"):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / rel).write_text(f"hello {rel}")
    cache = f"file://{tmp_path}/store/_cache/files/p1"
    env = _env(tmp_path, KUBEMAP_FILES_CACHE_URL=cache)
    assert filepod.main(["list"], env) == 0
    assert filetask.parse_listing_line((tmp_path / "term").read_text()) == (2, 0)
    task = open_store(env["KUBEMAP_TASK_URL"])
    names = [r["name"] for r in taskdata.read_slice(task, 0, 2)]
    assert sorted(names) == ["a.txt", "sub/b.txt"]
    index = names.index("sub/b.txt")
    work = tmp_path / "pod"
    pod_env = {**env, "KUBEMAP_INDEX": str(index), "KUBEMAP_WORK_DIR": str(work)}
    assert filepod.main(["fetch"], pod_env) == 0
    assert (work / "input" / "file").read_text() == "hello sub/b.txt"
    assert '"sub/b.txt"' in (tmp_path / "term").read_text()
    (work / "output" / "upper.txt").write_text("HELLO")
    assert filepod.main(["upload"], pod_env) == 0
    assert (tmp_path / "out" / "sub/b.txt" / "upper.txt").read_text() == "HELLO"
    # a duplicate pod of the same index changes nothing: the first upload stays
    (work / "output" / "upper.txt").write_text("OTHER")
    assert filepod.main(["upload"], pod_env) == 0
    assert (tmp_path / "out" / "sub/b.txt" / "upper.txt").read_text() == "HELLO"
    assert len(list(open_store(cache).iter_objects())) == 1
    # a new listing skips the processed file, and a changed one runs again
    env2 = {**env, "KUBEMAP_TASK_URL": f"file://{tmp_path}/store/t2"}
    assert filepod.main(["list"], env2) == 0
    assert filetask.parse_listing_line((tmp_path / "term").read_text()) == (2, 1)
    names2 = [r["name"] for r in taskdata.read_slice(open_store(env2["KUBEMAP_TASK_URL"]), 0, 1)]
    assert names2 == ["a.txt"]
    # listing again under the first task's name forgets its records: index 0 is a new file
    assert filepod.main(["list"], env) == 0
    assert not taskdata.done_in_slice(task, 0, 2)


def test_pod_commands_explain_a_broken_environment(tmp_path: Path, capsys: Any) -> None:
    assert filepod.main(["bogus"], {}) == 5
    env = {"KUBEMAP_TERMINATION_LOG": str(tmp_path / "term")}
    assert filepod.main(["list"], env) == 5
    assert "KUBEMAP_TASK_URL is not set" in capsys.readouterr().err
