"""The kubemap containers of a files MapTask (see kubemap.resources.filemode for the design).

    python -m kubemap.runtime.filetransfer list     # the listing pod: files -> inputs.bin / inputs.idx
    python -m kubemap.runtime.filetransfer fetch    # init container: the item's file -> $KUBEMAP_INPUT_PATH
    python -m kubemap.runtime.filetransfer upload   # main container: $KUBEMAP_OUTPUT_DIR -> output/<name>/

Exit codes follow the worker's contract: 0 done, 4 infrastructure (store unreachable:
the operator retries without spending the index's retries), 5 a broken environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubemap.contract import (
    DEFAULT_TERMINATION_LOG,
    ENV_INDEX,
    ENV_TASK_URL,
    ENV_TERMINATION_LOG,
    ERRORS_PREFIX,
    EXIT_INFRA_ERROR,
    EXIT_OK,
    EXIT_USAGE_ERROR,
    FILES_KEY,
    RESULTS_PREFIX,
)
from kubemap.errors import ConfigError, StoreError
from kubemap.resources import filemode
from kubemap.stores import Store, open_store
from kubemap.task import data as taskdata
from kubemap.task.inputfiles import READ_BUFFER, File, files

USAGE = (
    "usage: python -m kubemap.runtime.filetransfer list|fetch|upload (inside pods kubemap creates)"
)


def _log(message: str) -> None:
    print(f"kubemap files: {message}", file=sys.stderr, flush=True)


def _need(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(
            f"{name} is not set; this program runs in pods the kubemap operator creates"
        )
    return value


def _termination(environ: Mapping[str, str], line: str) -> None:
    path = environ.get(ENV_TERMINATION_LOG) or DEFAULT_TERMINATION_LOG
    if ENV_TERMINATION_LOG not in environ and not os.path.exists(path):
        return
    with contextlib.suppress(OSError):  # best effort: the exit code carries the outcome
        Path(path).write_text(line, encoding="utf-8")


def input_base(input_url: str) -> str:
    """The key the item names are relative to: "in" for s3://bucket/in/, "data/in" for
    file:///data/in/ (local keys are absolute paths without the leading "/")."""
    return urlsplit(input_url).path.strip("/")


# -- list ---------------------------------------------------------------------------------
def list_items(
    input_url: str, glob: str, done: set[bytes]
) -> tuple[Iterator[dict[str, Any]], dict[str, int]]:
    """The items (one record per matching file not in `done`), streamed, and counters
    that are final once the iterator is exhausted."""
    pattern = input_url.rstrip("/") + "/" + glob.lstrip("/")
    base = input_base(input_url)
    counts = {"listed": 0, "skipped": 0}

    def generate() -> Iterator[dict[str, Any]]:
        for found in files(pattern):
            counts["listed"] += 1
            name = filemode.relative_name(base, found.key)
            if done and bytes.fromhex(filemode.item_digest(name, found.size, found.tag)) in done:
                counts["skipped"] += 1
                continue
            yield {
                **filemode.item_record(name, found.url, found.size, found.tag),
                "key": found.key,
                "root": found.root,
            }

    return generate(), counts


def done_digests(cache_url: str | None) -> set[bytes]:
    """The entries of files this program already processed, read one LIST page at a time and
    kept as 16-byte digests (about 70 bytes each in a set: 70 MB at a million files)."""
    if not cache_url:
        return set()
    found: set[bytes] = set()
    for info in open_store(cache_url).iter_objects():
        try:
            found.add(bytes.fromhex(info.key))
        except ValueError:
            continue  # not an entry of ours
    return found


def run_list(environ: Mapping[str, str]) -> int:
    task = open_store(_need(environ, ENV_TASK_URL))
    input_url = _need(environ, filemode.ENV_FILES_INPUT)
    glob = environ.get(filemode.ENV_FILES_GLOB) or "**"
    done = done_digests(environ.get(filemode.ENV_FILES_CACHE))
    items, counts = list_items(input_url, glob, done)
    # A new listing numbers the files anew: records of an earlier task of this name (deleted
    # and applied again) would pass for this one's, so they go first.
    for prefix in (RESULTS_PREFIX, ERRORS_PREFIX):
        task.delete_prefix(prefix)
    total = taskdata.write_inputs(task, items)
    record = {**counts, "total": total, "input": input_url, "glob": glob}
    task.put(FILES_KEY, json.dumps(record).encode())
    _log(
        f"{counts['listed']} file(s) match {input_url} {glob}; {counts['skipped']} already done; {total} to run"
    )
    _termination(environ, filemode.listing_line(counts["listed"], counts["skipped"]))
    return EXIT_OK


# -- fetch --------------------------------------------------------------------------------
def _item(environ: Mapping[str, str]) -> tuple[Store, int, dict[str, Any]]:
    task = open_store(_need(environ, ENV_TASK_URL))
    try:
        index = int(_need(environ, ENV_INDEX))
    except ValueError:
        raise ConfigError(f"{ENV_INDEX}={environ.get(ENV_INDEX)!r} is not an index") from None
    record = taskdata.read_slice(task, index, 1)[0]
    if not isinstance(record, dict) or "name" not in record:
        raise ConfigError(
            f"item {index} of {task.url} is not a file record: was it listed by kubemap?"
        )
    return task, index, record


def run_fetch(environ: Mapping[str, str]) -> int:
    _task, index, record = _item(environ)
    work = Path(_need(environ, filemode.ENV_WORK_DIR))
    target = Path(filemode.input_path(str(work)))
    target.parent.mkdir(parents=True, exist_ok=True)
    Path(filemode.output_dir(str(work))).mkdir(parents=True, exist_ok=True)
    # The object as it is now, not as listed: a rerun after the file was fixed reads the fix.
    size = open_store(record["root"]).size(record["key"])
    source = File(url=record["url"], key=record["key"], size=size, tag="", root=record["root"])
    with source.open() as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, READ_BUFFER)
    (work / filemode.INPUT_KEY_FILE).write_text(record["name"], encoding="utf-8")
    # The operator names the file when the program fails: this message is where it reads it.
    _termination(environ, json.dumps({"file": record["name"]}))
    _log(f"item {index}: {record['url']} ({record['size']} bytes) -> {target}")
    return EXIT_OK


# -- upload -------------------------------------------------------------------------------
def outputs(directory: Path) -> list[tuple[str, Path]]:
    """Every regular file below `directory`, as (its path below it, its path), sorted."""
    found = [p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()]
    return sorted((p.relative_to(directory).as_posix(), p) for p in found)


def upload_outputs(out: Store, name: str, directory: Path) -> tuple[list[str], int]:
    """Write each output once (If-None-Match: *): a duplicate pod's copies are refused, so
    the first writer's object stays. Returns the keys and how many were already there."""
    keys: list[str] = []
    kept = 0
    for relative, path in outputs(directory):
        key = f"{name}/{relative}"
        if not out.put_if_absent(key, path.read_bytes()):
            kept += 1
        keys.append(key)
    return keys, kept


def run_upload(environ: Mapping[str, str]) -> int:
    task, index, record = _item(environ)
    name = record["name"]
    if taskdata.done_in_slice(task, index, 1):
        _log(f"item {index} ({name}) was already uploaded by another pod; keeping that one")
        _termination(environ, json.dumps({"v": 1, "succeeded": str(index)}))
        return EXIT_OK
    output_url = _need(environ, filemode.ENV_FILES_OUTPUT)
    out = open_store(output_url)
    directory = Path(filemode.output_dir(_need(environ, filemode.ENV_WORK_DIR)))
    keys, kept = upload_outputs(out, name, directory) if directory.is_dir() else ([], 0)
    manifest = {"file": name, "input": record["url"], "output": output_url, "keys": keys}
    taskdata.write_results(task, index, 1, {index: manifest})  # write-once: first pod wins
    cache = environ.get(filemode.ENV_FILES_CACHE)
    if cache:
        digest = filemode.item_digest(name, int(record["size"]), str(record.get("tag", "")))
        open_store(cache).put_if_absent(digest, json.dumps(manifest).encode())
    _log(f"item {index} ({name}): {len(keys)} output(s) to {output_url}, {kept} already there")
    _termination(environ, json.dumps({"v": 1, "succeeded": str(index)}))
    return EXIT_OK


COMMANDS = {"list": run_list, "fetch": run_fetch, "upload": run_upload}


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    env = os.environ if environ is None else environ
    if len(args) != 1 or args[0] not in COMMANDS:
        _log(USAGE)
        return EXIT_USAGE_ERROR
    try:
        return COMMANDS[args[0]](env)
    except ConfigError as exc:
        _log(f"{args[0]}: {exc}")
        _termination(env, json.dumps({"v": 1, "refused": str(exc)[:1000]}))
        return EXIT_USAGE_ERROR
    except StoreError as exc:
        _log(f"{args[0]}: store failure: {exc}")
        _termination(env, json.dumps({"v": 1, "infra": str(exc)[:2000]}))
        return EXIT_INFRA_ERROR


if __name__ == "__main__":
    sys.exit(main())
