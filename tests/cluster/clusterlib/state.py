"""Where the test cluster keeps its files, and the record of a running cluster (state.json)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Proc

CLUSTER_DIR = Path(__file__).resolve().parent.parent  # tests/cluster
REPO = CLUSTER_DIR.parent.parent
NAMESPACE = "kubemap-system"
S3_SECRET = "kubemap-s3"
BUCKET = "kubemap"
STORE = f"s3://{BUCKET}/tasks"
REGION = "us-east-1"
NODE_NAME = "kubemap-node-0"


def state_dir() -> Path:
    return Path(
        os.environ.get("KUBEMAP_TESTCLUSTER_STATE") or CLUSTER_DIR / ".cache" / "state"
    ).resolve()


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "kubemap-testcluster"
    return Path(os.environ.get("KUBEMAP_TESTCLUSTER_CACHE") or default).expanduser()


@dataclass
class ClusterState:
    """What ``down`` and ``env`` need to know about a cluster that ``up`` started."""

    cluster_id: str
    kubeconfig: str
    apiserver_url: str
    s3_endpoint: str
    access_key: str
    secret_key: str
    ports: dict[str, int] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    ready: bool = False

    def env(self) -> dict[str, str]:
        return {
            "KUBECONFIG": self.kubeconfig,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "KUBEMAP_STORE": STORE,
        }

    def save(self, d: Path) -> None:
        data = {**self.__dict__, "procs": [p.to_json() for p in self.procs]}
        tmp = d / "state.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.chmod(0o600)
        tmp.replace(d / "state.json")

    @classmethod
    def load(cls, d: Path) -> ClusterState | None:
        try:
            data = json.loads((d / "state.json").read_text())
        except FileNotFoundError:
            return None
        procs = [Proc.from_json(p) for p in data.pop("procs")]
        return cls(**data, procs=procs)
