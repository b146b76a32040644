"""`python -m kubemap_operator`: run the operator with settings from the environment."""

from __future__ import annotations

import asyncio
import logging
import sys

import kopf
from kubemap.errors import ConfigError

from kubemap_operator import metrics
from kubemap_operator.registry import build_registry
from kubemap_operator.settings import Settings


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"kubemap-operator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    metrics.serve(settings.metrics_port, settings.listen_address)
    registry = build_registry(settings)
    liveness = (
        f"http://{settings.listen_address}:{settings.liveness_port}/healthz"
        if settings.liveness_port
        else None
    )
    namespaces = list(settings.watch_namespaces)
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
