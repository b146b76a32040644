"""The node emulator's emptyDir volumes: a directory under the pod's dir per volume, shared
by the containers that mount it, with the paths they are told rewritten to it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubelet_emu.launch import empty_dir_mounts, rebase_path

POD = {
    "spec": {
        "volumes": [
            {"name": "work", "emptyDir": {}},
            {"name": "token", "projected": {"sources": []}},
        ]
    }
}


def test_empty_dirs_live_under_the_pod_dir_and_paths_follow(tmp_path: Path) -> None:
    container = {
        "volumeMounts": [
            {"name": "work", "mountPath": "/kubemap/"},
            {"name": "token", "mountPath": "/var/run/secrets"},  # not an emptyDir: ignored
        ]
    }
    mounts = empty_dir_mounts(POD, container, tmp_path)
    assert mounts == {"/kubemap": tmp_path / "volumes" / "work"}
    assert (tmp_path / "volumes" / "work").is_dir()
    assert rebase_path("/kubemap/input/file", mounts) == f"{tmp_path}/volumes/work/input/file"
    assert rebase_path("/kubemap", mounts) == f"{tmp_path}/volumes/work"
    # only whole path segments: /kubemapx is another path
    assert rebase_path("/kubemapx/a", mounts) == "/kubemapx/a"
    assert rebase_path("tr a-z A-Z", mounts) == "tr a-z A-Z"


def test_a_container_without_mounts_sees_no_change(tmp_path: Path) -> None:
    assert empty_dir_mounts(POD, {}, tmp_path) == {}
    assert not (tmp_path / "volumes").exists()
