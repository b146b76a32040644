"""Per-pool credentials: HMAC(dispatcher key, "<namespace>/<pool>/<uid>").

Derived, not stored: the operator writes each pool's token into the pool's Secret (which
only that pool's pods mount) and checks a presented token by recomputing it, so it never
needs to read a Secret back. A pool deleted and created again has a new uid, hence a new
token; tokens of another pool, or of a pod outside any pool, are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys


def dispatcher_key(environ: dict[str, str] | None = None) -> bytes:
    """The key from KUBEMAP_DISPATCHER_KEY (the chart's Secret), else a random one.

    A random key makes every pool token change on an operator restart; the pool reconcile
    then rewrites the Secrets and workers that are refused exit, so their pods restart with
    the new token. The chart always sets a key, which avoids that churn."""
    env = os.environ if environ is None else environ
    text = env.get("KUBEMAP_DISPATCHER_KEY", "").strip()
    if text:
        return text.encode()
    print(
        "kubemap-operator: KUBEMAP_DISPATCHER_KEY is not set; pool tokens change on restart",
        file=sys.stderr,
    )
    return secrets.token_bytes(32)


def pool_token(key: bytes, namespace: str, pool: str, uid: str) -> str:
    return hmac.new(key, f"{namespace}/{pool}/{uid}".encode(), hashlib.sha256).hexdigest()


def token_ok(key: bytes, namespace: str, pool: str, uid: str, presented: str) -> bool:
    return hmac.compare_digest(pool_token(key, namespace, pool, uid), presented)
