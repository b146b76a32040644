"""Container mode over files (spec.files): the names and keys the operator and pods share.

A files MapTask runs in two steps, both in pods with the kubemap image, so the operator
never needs S3 credentials and the MapTask never holds a list that grows with N:

1. a listing pod (`python -m kubemap.runtime.filetransfer list`) pages through input + glob with
   kubemap.files (one LIST page held at a time) and streams one item per file into the
   task's inputs.bin / inputs.idx (the function-mode layout), skipping files the same
   program already processed when skipExisting is on; its termination message says how
   many matched and how many were skipped, which the operator records in the status;
2. one pod per item: an init container fetches the item's file into an emptyDir, the
   user's program runs as a second init container (so it runs on any image, unchanged),
   and the main container uploads what the program wrote, once, and records the item.

Everything here is pure: the operator imports it to build pods.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from kubemap.resources.maptask import FilesSpec, PodTemplate

# Environment of the kubemap containers of a files pod (the user's program gets the first two).
ENV_INPUT_PATH = "KUBEMAP_INPUT_PATH"
ENV_OUTPUT_DIR = "KUBEMAP_OUTPUT_DIR"
ENV_FILES_INPUT = "KUBEMAP_FILES_INPUT"  # the listing pod: input prefix URL
ENV_FILES_GLOB = "KUBEMAP_FILES_GLOB"
ENV_FILES_OUTPUT = "KUBEMAP_FILES_OUTPUT"  # output prefix URL
ENV_FILES_CACHE = "KUBEMAP_FILES_CACHE_URL"  # the program's cache entries (skipExisting)
ENV_WORK_DIR = "KUBEMAP_WORK_DIR"  # the emptyDir the three containers share

WORK_DIR = "/kubemap"  # where the emptyDir is mounted
INPUT_NAME = "file"  # $KUBEMAP_INPUT_PATH = /kubemap/input/file (the name is fixed at pod creation)
INPUT_KEY_FILE = "input.key"  # the fetch step writes the file's key here, for programs that want it
VOLUME = "kubemap-files"

FETCH_CONTAINER = "kubemap-fetch"
PROGRAM_CONTAINER = "worker"  # the user's program: the name logs and messages use for it
UPLOAD_CONTAINER = "kubemap-upload"
LIST_CONTAINER = "kubemap-list"
FILES_CACHE_DIR = "_cache/files"


def input_path(work_dir: str = WORK_DIR) -> str:
    return f"{work_dir.rstrip('/')}/input/{INPUT_NAME}"


def output_dir(work_dir: str = WORK_DIR) -> str:
    return f"{work_dir.rstrip('/')}/output"


def program_id(files: FilesSpec, template: PodTemplate) -> str:
    """Changes when anything that decides a file's output does: the program (image, command,
    args, env), where it reads and writes, and the version the user gives."""
    identity = {
        "v": 1,
        "image": template.image,
        "command": template.command,
        "args": template.args,
        "env": template.env,
        "input": files.input.rstrip("/"),
        "glob": files.glob,
        "output": files.output.rstrip("/"),
        "version": files.version,
    }
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def cache_url(store_url: str, files: FilesSpec, template: PodTemplate) -> str:
    return f"{store_url.rstrip('/')}/{FILES_CACHE_DIR}/{program_id(files, template)}"


def item_digest(name: str, size: int, tag: str) -> str:
    """A file's cache entry name: a changed file (new size or ETag) runs again."""
    return hashlib.blake2b(f"{name}\0{size}\0{tag}".encode(), digest_size=16).hexdigest()


def relative_name(input_prefix_key: str, key: str) -> str:
    """The item's name: its key below the input prefix ("a/b.jpg" for in/a/b.jpg)."""
    base = input_prefix_key.rstrip("/")
    if base and key.startswith(base + "/"):
        return key[len(base) + 1 :]
    return key.removeprefix(base).lstrip("/") or key.rsplit("/", 1)[-1]


def item_record(name: str, url: str, size: int, tag: str) -> dict[str, Any]:
    return {"name": name, "url": url, "size": size, "tag": tag}


def listing_line(listed: int, skipped: int) -> str:
    return json.dumps({"v": 1, "listed": listed, "skipped": skipped}, separators=(",", ":"))


def parse_listing_line(text: str | None) -> tuple[int, int] | None:
    """(listed, skipped) from the listing pod's termination message, else None."""
    if not text:
        return None
    try:
        data = json.loads(text.strip().splitlines()[-1])
        return int(data["listed"]), int(data["skipped"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _terminated(statuses: Iterable[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    for cs in statuses:
        if cs.get("name") == name:
            state = cs.get("state") or {}
            last = cs.get("lastState") or {}
            return state.get("terminated") or last.get("terminated") or {}
    return {}


def program_failure(status: Mapping[str, Any]) -> str | None:
    """'file a/c.txt: exit code 1: <last lines>' when the user's program of a files pod
    failed (it runs as an init container, after the fetch that named the file), else None."""
    inits = status.get("initContainerStatuses") or []
    program = _terminated(inits, PROGRAM_CONTAINER)
    code = program.get("exitCode")
    if not program or code in (None, 0):
        return None
    fetched = _terminated(inits, FETCH_CONTAINER).get("message") or ""
    try:
        name = str(json.loads(fetched)["file"])
    except (ValueError, KeyError, TypeError):
        name = "?"
    tail = " ".join(str(program.get("message") or "").split())[-160:]
    return f"file {name}: exit code {code}" + (f": {tail}" if tail else "")
