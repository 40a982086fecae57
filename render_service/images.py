"""Where a succeeded job's PNGs live: in Redis next to the record (``redis``, the default) or in an
S3-compatible bucket (``s3``: AWS S3, MinIO, R2, GCS interop), chosen by ``OMOST_RENDER_IMAGE_STORE``.

With ``s3`` the worker uploads every PNG, then records only the object keys (``Rec.IMAGE_KEYS``)
in the same transaction that marks the job ``succeeded``, so a record never names half a set.
Object keys carry the delivery's token: a reclaimed job's second run never overwrites (or mixes
with) objects of a first run that died mid-upload. Every key is entered in the sorted set
``{p}images:expiry`` (score: when it expires) *before* its upload, so the workers' sweep removes
orphans of dead runs as well as the images of expired jobs. A bucket lifecycle rule is the
backstop for anything the sweep never sees (docs/render-service.md).

The client is boto3 (credentials from the standard AWS provider chain). Its calls block: the
worker makes them on its own thread, the API through ``anyio.to_thread``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import redis

from render_service.settings import RenderSettings
from shared.queue import QueueKeys, Rec, text

log = logging.getLogger("render_service.images")

_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling"}
SWEEP_BATCH = 1000
"""Keys deleted per sweep (and per DeleteObjects call, whose limit this is)."""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the store was unreachable or overloaded (not: no such bucket, access denied)."""
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in _TRANSIENT_CODES or int(status) >= 500
    return False


def describe(exc: BaseException) -> str:
    """A one-line reason for a job's ``error`` field."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', exc)}"
    return f"{type(exc).__name__}: {exc}"


class S3Images:
    """One bucket and key prefix, through one thread-safe boto3 client."""

    def __init__(self, settings: RenderSettings) -> None:
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.presign_seconds = settings.s3_presign_seconds
        endpoint = settings.s3_endpoint_url or None
        config = botocore.config.Config(
            region_name=settings.s3_region or None,
            signature_version="s3v4",
            # botocore retries throttling and 5xx itself a few times; the worker's RetryPolicy
            # retries longer on top, so a short outage does not fail the job.
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            # Self-hosted stores (MinIO, moto) rarely have wildcard DNS for virtual-host buckets.
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        self.client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)

    def key(self, job_id: str, token: str, index: int) -> str:
        """Object key of image ``index`` of the delivery with owner ``token`` (``worker/hex``)."""
        return f"{self.prefix}{job_id}/{token.replace('/', '-')}/{index}.png"

    def put(self, key: str, png: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=png, ContentType="image/png")

    def get(self, key: str) -> bytes | None:
        """The object's bytes; None when it no longer exists (expired)."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return bytes(answer["Body"].read())

    def presign(self, key: str) -> str:
        """A GET URL valid for ``presign_seconds``, signed locally (no request to the store)."""
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_seconds
            )
        )

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), SWEEP_BATCH):
            batch = [{"Key": k} for k in keys[start : start + SWEEP_BATCH]]
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                raise RuntimeError(f"could not delete {len(errors)} object(s), e.g. {errors[0]}")


def image_keys(record: Mapping[str, str]) -> list[str] | None:
    """The object keys a record names (an ``s3`` job), or None (a ``redis`` job: PNGs in Redis)."""
    raw = record.get(Rec.IMAGE_KEYS)
    return list(json.loads(raw)) if raw else None


def register(pipe: Any, keys: QueueKeys, object_keys: list[str], expire_at: float) -> None:
    """Buffer: these objects are to be deleted at ``expire_at`` (re-registering moves the time)."""
    if object_keys:
        pipe.zadd(keys.image_expiry, {k: expire_at for k in object_keys})


def sweep(client: redis.Redis, keys: QueueKeys, store: S3Images, now: float | None = None) -> int:
    """Delete objects whose time has come, then forget them; the number deleted.

    Several workers may sweep at once: deleting an object twice is harmless, and a key is dropped
    from the set only after its object is gone, so a sweeper dying midway loses nothing.
    """
    due = [text(k) for k in client.zrangebyscore(keys.image_expiry, "-inf", now or time.time(), 0, SWEEP_BATCH)]
    if not due:
        return 0
    store.delete(due)
    client.zrem(keys.image_expiry, *due)
    log.info("expired images deleted", extra={"fields": {"objects": len(due)}})
    return len(due)
