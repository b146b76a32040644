"""Shared by the real-node tests: where they run, and what puts a pod on the real node."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/cluster: clusterlib

from clusterlib.realnode_config import REAL_NODE_LABEL

NAMESPACE = os.environ.get("KUBEMAP_E2E_NAMESPACE", "default")
IMAGE = os.environ.get("IMAGE", "kubemap:dev")
# What a pod needs to run on the real node rather than on the emulator.
ON_REAL_NODE: dict[str, Any] = {
    "nodeSelector": {REAL_NODE_LABEL: "true"},
    "tolerations": [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
}


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll until ``check`` returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f}s")
        time.sleep(0.5)
