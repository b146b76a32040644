"""The SeaweedFS S3 side of the test cluster: credentials and the bucket."""

from __future__ import annotations

import secrets

from .state import BUCKET, REGION


def new_credentials() -> tuple[str, str]:
    """A fresh access key id and secret for this cluster's one S3 identity."""
    return "KM" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)


def ensure_bucket(endpoint: str, access_key: str, secret_key: str) -> bool:
    """Create the bucket (idempotent) with signed requests; true once it exists."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10),
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        s3.create_bucket(Bucket=BUCKET)
    s3.head_bucket(Bucket=BUCKET)
    return True
