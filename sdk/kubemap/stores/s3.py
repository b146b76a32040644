"""S3 (or any S3-compatible server) as a Store, through boto3.

Endpoint, credentials and region come from the standard AWS settings, which boto3 reads
itself: AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, AWS_MAX_ATTEMPTS, profiles. The client is created lazily, once per process (a
forked child makes its own).

Retries: botocore's "standard" mode retries real failures (connection errors, 500s) within
AWS_MAX_ATTEMPTS and its retry quota. Throttles ("503 SlowDown", ThrottlingException) are
taken out of its hands: it would count each one as an attempt and charge its quota, so a
long throttle would leave nothing for real failures (its "adaptive" mode does the same, and
its client-side rate is per client, not per bucket). Instead every request goes through the
process's AIMD limiter for its endpoint and bucket (kubemap.core.aimd): a throttle halves the
rate and the request is retried when the limiter allows, spending no attempt.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from kubemap.core.aimd import AimdConfig, AimdLimiter, Limiters, is_throttle
from kubemap.errors import StoreError
from kubemap.stores.base import KeyNotFound, ObjectInfo, Store, check_key, check_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # pragma: no cover
else:
    S3Client = Any

PART_SIZE = 8 * 1024 * 1024  # S3 needs >= 5 MiB for every part but the last
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()
# One limiter per (endpoint, bucket) in this process: every store of that bucket shares it.
# Per process: from the rate really sent, x0.7 on a throttle (botocore's adaptive mode uses
# the same factor), at most once a second; 10 requests/s more each second of successes.
STORE_LIMITS = AimdConfig(min_rate=2.0, max_rate=1000.0, increase=10.0, decrease=0.7)
LIMITERS = Limiters(STORE_LIMITS)
# A throttle is waited out, not failed; past this much throttling in a row the request fails
# (an S3 that never lets anything through is down, not busy).
THROTTLE_PATIENCE = 900.0


def _reset_after_fork() -> None:
    # A fork while another thread holds the lock would leave the child's copy locked
    # forever; boto3 clients are not fork-safe either (the pid in the key drops them).
    global _CLIENTS_LOCK
    _CLIENTS_LOCK = threading.Lock()
    _CLIENTS.clear()
    LIMITERS.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def _client_settings(endpoint: str | None, region: str | None) -> tuple[Any, ...]:
    env = os.environ
    return (
        os.getpid(),
        endpoint,
        region,
        *(env.get(name) for name in _ENDPOINT_VARS),
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
        env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        env.get("AWS_PROFILE"),
        env.get("AWS_MAX_ATTEMPTS"),
    )


def s3_client(endpoint: str | None = None, region: str | None = None) -> S3Client:
    """The process's boto3 S3 client for the current AWS settings; `endpoint` and `region`,
    when given, override the environment's for this client only (e.g. the endpoint a
    chart publishes: kubemap never writes it into the caller's os.environ)."""
    settings = _client_settings(endpoint, region)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(settings)
        if client is None:
            import boto3
            from botocore.config import Config

            custom_endpoint = bool(endpoint) or any(os.environ.get(n) for n in _ENDPOINT_VARS)
            config = Config(
                retries={"mode": "standard"},
                connect_timeout=10,
                read_timeout=120,
                # S3-compatible servers on a host:port rarely resolve bucket subdomains
                s3={"addressing_style": "path"} if custom_endpoint else None,
                # Checksums only when required: many S3-compatible servers reject the
                # newer trailing checksums that boto3 >= 1.36 sends by default.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            try:
                client = boto3.session.Session().client(
                    "s3", config=config, endpoint_url=endpoint or None, region_name=region or None
                )
            except ValueError as exc:  # e.g. a malformed endpoint URL
                raise StoreError(
                    f"cannot create an S3 client: {exc}; check AWS_ENDPOINT_URL_S3 "
                    f"({endpoint or os.environ.get('AWS_ENDPOINT_URL_S3')!r}) and AWS_REGION"
                ) from exc
            _leave_throttles_to_the_limiter(client)
            if len(_CLIENTS) >= 4:  # settings changed: drop the others (a store with its
                _CLIENTS.clear()  # own endpoint and one on the environment's may alternate)
            _CLIENTS[settings] = client
    return cast(S3Client, client)


def _leave_throttles_to_the_limiter(client: Any) -> None:
    """Keep botocore's standard retries for real failures, but let a throttle come back to
    the caller at once (no attempt counted, no retry quota charged): S3Store retries it
    through the AIMD limiter. botocore has no setting for this, so its needs-retry handler is
    wrapped (same unique id, same handler otherwise)."""
    from botocore.retries import standard

    events = client.meta.events
    event = f"needs-retry.{client.meta.service_model.service_id.hyphenize()}"
    unique_id = f"retry-config-{client.meta.service_model.service_id.hyphenize()}"
    max_attempts = client.meta.config.retries.get("total_max_attempts")
    events.unregister(event, unique_id=unique_id)
    handler = standard.register_retry_handler(client, max_attempts)
    events.unregister(event, unique_id=unique_id)

    def needs_retry(**kwargs: Any) -> Any:
        response = kwargs.get("response")
        if response is not None:
            http, parsed = response
            code = (parsed or {}).get("Error", {}).get("Code")
            if is_throttle(getattr(http, "status_code", None), code):
                return None  # to S3Store._request, which waits it out
        return handler.needs_retry(**kwargs)

    events.register(event, needs_retry, unique_id=unique_id)


def _retry_after(exc: Exception) -> float | None:
    headers = (
        (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPHeaders", {})
    )
    try:
        return float(headers["retry-after"]) if "retry-after" in headers else None
    except ValueError:
        return None


class S3Store(Store):
    """`s3://bucket/prefix`; keys below the prefix. `endpoint` / `region`: this store's
    own, over the environment's (children keep them)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint or None
        self.region = region or None

    @property
    def client(self) -> S3Client:
        return s3_client(self.endpoint_url, self.region)

    @property
    def limiter(self) -> AimdLimiter:
        """This process's limiter for the store's endpoint and bucket."""
        return LIMITERS.get((self.endpoint(), self.bucket))

    def _request(self, operation: str, **kwargs: Any) -> Any:
        """One S3 call under the bucket's limiter; a throttle is retried, never counted."""
        from botocore.exceptions import ClientError

        limiter = self.limiter
        call: Callable[..., Any] = getattr(self.client, operation)
        first_throttle: float | None = None
        while True:
            wait = limiter.reserve()
            if wait > 0:
                time.sleep(wait)
            sent = limiter.now()
            try:
                response = call(**kwargs)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if not is_throttle(status, code):
                    raise
                limiter.throttled(_retry_after(exc), sent)
                first_throttle = sent if first_throttle is None else first_throttle
                if sent - first_throttle > THROTTLE_PATIENCE:
                    raise
                continue
            limiter.succeeded()
            return response

    def child(self, name: str) -> S3Store:
        name = check_key(name.strip("/"))
        return S3Store(
            self.bucket,
            f"{self.prefix}/{name}" if self.prefix else name,
            endpoint=self.endpoint_url,
            region=self.region,
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- error mapping ---------------------------------------------------------------
    def endpoint(self) -> str:
        try:
            return str(self.client.meta.endpoint_url)
        except StoreError:
            return (
                self.endpoint_url
                or os.environ.get("AWS_ENDPOINT_URL_S3")
                or "the default AWS endpoint"
            )

    def _error(self, exc: Exception, action: str, key: str | None) -> StoreError:
        from botocore.exceptions import (
            ClientError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )

        where = f"s3://{self.bucket}/{self._key(key)}" if key is not None else self.url
        endpoint = self.endpoint()
        if isinstance(exc, HTTPClientError | BotoConnectionError):
            return StoreError(
                f"cannot reach S3 endpoint {endpoint} (bucket {self.bucket!r}) to {action} "
                f"{where}: {exc}; check AWS_ENDPOINT_URL_S3 / --store and that the server is up",
                code="EndpointUnreachable",
                bucket=self.bucket,
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreError(
                f"no S3 credentials to {action} {where} at {endpoint}: {exc}; set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
                code="NoCredentials",
                bucket=self.bucket,
            )
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            message = str(error.get("Message", "")) or str(exc)
            if code == "NoSuchBucket":
                return StoreError(
                    f"bucket {self.bucket!r} does not exist at S3 endpoint {endpoint} "
                    f"(needed to {action} {where}); create it, e.g. "
                    f"`aws s3 mb s3://{self.bucket}`, or point --store / KUBEMAP_STORE "
                    "at an existing bucket",
                    code=code,
                    bucket=self.bucket,
                )
            if code in (
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "403",
                "Forbidden",
            ):
                return StoreError(
                    f"S3 endpoint {endpoint} refused to {action} {where} ({code}: {message}); "
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy",
                    code=code,
                    bucket=self.bucket,
                )
            return StoreError(
                f"S3 endpoint {endpoint} failed to {action} {where}: {code}: {message}",
                code=code,
                bucket=self.bucket,
            )
        return StoreError(
            f"S3 error at {endpoint} while trying to {action} {where}: {exc}", bucket=self.bucket
        )

    @staticmethod
    def _code(exc: Exception) -> str:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code or str(status or "")

    @contextlib.contextmanager
    def _mapped(self, action: str, key: str | None) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound") and key is not None:
                raise KeyNotFound(f"{key!r} not found in {self.url}") from None
            raise self._error(exc, action, key) from exc

    # -- Store -----------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        with self._mapped("write", key):
            self._request("put_object", Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._mapped("write", key):
                try:
                    self._request(
                        "put_object",
                        Bucket=self.bucket,
                        Key=self._key(key),
                        Body=data,
                        IfNoneMatch="*",
                    )
                except ClientError as exc:
                    if self._code(exc) in (
                        "PreconditionFailed",
                        "412",
                        "ConditionalRequestConflict",
                        "409",
                    ):
                        return False
                    raise
        except KeyNotFound as exc:  # pragma: no cover - a PUT never answers NoSuchKey
            raise self._error(exc, "write", key) from exc
        return True

    @contextlib.contextmanager
    def open_writer(self, key: str) -> Iterator[BinaryIO]:
        writer = _MultipartWriter(self, key)
        try:
            yield cast(BinaryIO, writer)
            writer.finish()
        except BaseException:
            writer.abort()  # no half-written object, no parts left billed
            raise

    def get(self, key: str) -> bytes:
        with self._mapped("read", key):
            response = self._request("get_object", Bucket=self.bucket, Key=self._key(key))
            return cast(bytes, response["Body"].read())

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        from botocore.exceptions import ClientError

        if start < 0 or stop < start:
            raise ValueError(f"bad byte range [{start}, {stop}) for {key!r}")
        if stop == start:
            return b""
        with self._mapped("read", key):
            try:
                response = self._request(
                    "get_object",
                    Bucket=self.bucket,
                    Key=self._key(key),
                    Range=f"bytes={start}-{stop - 1}",
                )
            except ClientError as exc:
                if self._code(exc) in ("InvalidRange", "416"):
                    return b""  # the range starts past the end: a short read
                raise
            return cast(bytes, response["Body"].read())

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except KeyNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        with self._mapped("stat", key):
            response = self._request("head_object", Bucket=self.bucket, Key=self._key(key))
            return int(response["ContentLength"])

    def _pages(self, prefix: str, start_after: str = "") -> Iterator[dict[str, Any]]:
        """list_objects_v2 page by page (one request per page, made when the previous page is
        used up), each page under the limiter: a paginator could not retry one throttled page."""
        base = f"{self.prefix}/" if self.prefix else ""
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base + prefix}
        if start_after:
            request["StartAfter"] = base + start_after
        while True:
            with self._mapped("list", prefix or None):
                page = self._request("list_objects_v2", **request)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            request["ContinuationToken"] = token

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        keys = [
            obj["Key"][len(base) :]
            for page in self._pages(prefix)
            for obj in page.get("Contents", ())
        ]
        return iter(keys)

    def iter_objects(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        for page in self._pages(prefix, start_after):
            for obj in page.get("Contents", ()):
                yield ObjectInfo(
                    obj["Key"][len(base) :], int(obj["Size"]), str(obj.get("ETag", "")).strip('"')
                )

    def delete_prefix(self, prefix: str = "") -> int:
        keys = [self._key(k) for k in self.list(prefix)]
        deleted = 0
        with self._mapped("delete", prefix or None):
            for first in range(0, len(keys), 1000):
                batch = keys[first : first + 1000]
                response = self._request(
                    "delete_objects",
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
                errors = response.get("Errors") or []
                if errors:
                    first_error = errors[0]
                    raise StoreError(
                        f"S3 endpoint {self.endpoint()} could not delete "
                        f"{len(errors)} objects under {self.url}/{prefix}, e.g. "
                        f"{first_error.get('Key')!r}: {first_error.get('Code')} "
                        f"{first_error.get('Message')}"
                    )
                deleted += len(batch)
        return deleted


class _MultipartWriter(io.RawIOBase):
    """Buffers one part at a time; small objects are a single PUT, large ones multipart."""

    def __init__(self, store: S3Store, key: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._buffer += view
        while len(self._buffer) >= PART_SIZE:
            self._upload_part(bytes(self._buffer[:PART_SIZE]))
            del self._buffer[:PART_SIZE]
        return len(view)

    def _upload_part(self, body: bytes) -> None:
        store = self._store
        with store._mapped("write", self._key):
            if self._upload_id is None:
                created = store._request(
                    "create_multipart_upload", Bucket=store.bucket, Key=store._key(self._key)
                )
                self._upload_id = str(created["UploadId"])
            number = len(self._parts) + 1
            part = store._request(
                "upload_part",
                Bucket=store.bucket,
                Key=store._key(self._key),
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            )
            self._parts.append({"PartNumber": number, "ETag": part["ETag"]})

    def finish(self) -> None:
        store = self._store
        if self._upload_id is None:
            store.put(self._key, bytes(self._buffer))
        else:
            if self._buffer or not self._parts:
                self._upload_part(bytes(self._buffer))
            with store._mapped("write", self._key):
                store._request(
                    "complete_multipart_upload",
                    Bucket=store.bucket,
                    Key=store._key(self._key),
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        self._buffer = bytearray()
        super().close()

    def abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is not None:
            with contextlib.suppress(Exception):  # best effort; lifecycle rules clean the rest
                self._store._request(
                    "abort_multipart_upload",
                    Bucket=self._store.bucket,
                    Key=self._store._key(self._key),
                    UploadId=self._upload_id,
                )
        super().close()
