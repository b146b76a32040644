"""Operator settings, read once from the environment (Settings.from_env): a field `x_y` comes
from KUBEMAP_X_Y (pip_env excepted, see its comment), which
charts/kubemap/templates/deployment.yaml sets from the chart values."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubemap.core.policy import BACKOFF_BASE_SECONDS
from kubemap.errors import ConfigError

# Restricted Pod Security Standard: what a worker pod runs with unless the template says otherwise.
RESTRICTED_POD_DEFAULTS: dict[str, Any] = {
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "podSecurityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "automountServiceAccountToken": False,
}


PIP_ENV = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")


@dataclass(frozen=True)
class Settings:
    """Every knob of the operator. Defaults are what the chart documents."""

    watch_namespaces: tuple[str, ...] = ()
    default_store: str = ""
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_secret: str = "kubemap-s3"
    worker_image: str = "ghcr.io/kubemap/kubemap:0.1.0"
    worker_pod_defaults: Mapping[str, Any] = field(default_factory=lambda: RESTRICTED_POD_DEFAULTS)
    pod_create_qps: float = 20.0
    pod_create_burst: int = 50
    failed_pods_kept: int = 20
    reconcile_interval: float = 10.0
    metrics_port: int = 9090
    liveness_port: int = 8080
    listen_address: str = "0.0.0.0"
    log_level: str = "INFO"
    backoff_base_seconds: float = BACKOFF_BASE_SECONDS
    # Warm pools: where the dispatcher listens (0: off) and the URL pool workers reach it at.
    dispatcher_port: int = 8787
    dispatcher_url: str = ""
    lease_seconds: float = 15.0
    # The read-only dashboard (kubemap_operator/dashboard/), on 127.0.0.1 only (0: off).
    dashboard_port: int = 8788
    # The package index pool workers pip-install runtime packages from: the operator's own
    # PIP_INDEX_URL, PIP_EXTRA_INDEX_URL and PIP_TRUSTED_HOST (chart: operator.extraEnv),
    # passed to every pool's workers unless the pool's env sets them.
    pip_env: Mapping[str, str] = field(default_factory=dict)
    # The Kueue LocalQueue of tasks without spec.queueName (chart: kueue.defaultQueue);
    # empty: none (Kueue itself then uses a LocalQueue named "default" if the namespace has one).
    default_queue: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return env.get(f"KUBEMAP_{name}", "").strip() or default

        def number(name: str, default: float) -> float:
            text = get(name, str(default))
            try:
                return float(text)
            except ValueError:
                raise ConfigError(
                    f"KUBEMAP_{name}={text!r} is not a number; set it to e.g. {default}"
                ) from None

        defaults_text = get("WORKER_POD_DEFAULTS", "")
        pod_defaults: Mapping[str, Any] = RESTRICTED_POD_DEFAULTS
        if defaults_text:
            try:
                parsed = json.loads(defaults_text)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"KUBEMAP_WORKER_POD_DEFAULTS is not valid JSON ({exc}); give an object such as "
                    '{"resources": {"requests": {"cpu": "100m"}}}'
                ) from None
            if not isinstance(parsed, dict):
                raise ConfigError("KUBEMAP_WORKER_POD_DEFAULTS must be a JSON object")
            pod_defaults = parsed
        namespaces = tuple(
            ns.strip() for ns in get("WATCH_NAMESPACES", "").split(",") if ns.strip()
        )
        return cls(
            watch_namespaces=namespaces,
            default_store=get("DEFAULT_STORE", ""),
            s3_endpoint=get("S3_ENDPOINT", ""),
            s3_region=get("S3_REGION", "us-east-1"),
            s3_secret=get("S3_SECRET", "kubemap-s3"),
            worker_image=get("WORKER_IMAGE", cls.worker_image),
            worker_pod_defaults=pod_defaults,
            pod_create_qps=number("POD_CREATE_QPS", 20.0),
            pod_create_burst=int(number("POD_CREATE_BURST", 50)),
            failed_pods_kept=int(number("FAILED_PODS_KEPT", 20)),
            reconcile_interval=number("RECONCILE_INTERVAL", 10.0),
            metrics_port=int(number("METRICS_PORT", 9090)),
            liveness_port=int(number("LIVENESS_PORT", 8080)),
            listen_address=get("LISTEN_ADDRESS", "0.0.0.0"),
            log_level=get("LOG_LEVEL", "INFO").upper(),
            backoff_base_seconds=number("BACKOFF_BASE_SECONDS", BACKOFF_BASE_SECONDS),
            dispatcher_port=int(number("DISPATCHER_PORT", 8787)),
            dispatcher_url=get("DISPATCHER_URL", ""),
            lease_seconds=number("LEASE_SECONDS", 15.0),
            dashboard_port=int(number("DASHBOARD_PORT", 8788)),
            pip_env={k: env[k] for k in PIP_ENV if env.get(k, "").strip()},
            default_queue=get("DEFAULT_QUEUE", ""),
        )
