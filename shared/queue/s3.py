"""The S3 image store: a job's PNGs in an S3-compatible bucket (AWS S3, MinIO, R2, GCS interop) instead of
Redis (the default, :class:`shared.queue.images.RedisImages`), chosen by ``OMOST_RENDER_IMAGE_STORE=s3``.

With ``s3`` the worker uploads every PNG, then records only the object keys (``image_keys``)
in the same transaction that marks the job ``succeeded``, so a record never names half a set.
Object keys carry the delivery's token: a reclaimed job's second run never overwrites (or mixes
with) objects of a first run that died mid-upload. Every key is entered in the sorted set
``{p}images:expiry`` (score: when it expires) *before* its upload, so the workers' sweep removes
orphans of dead runs as well as the images of expired jobs. A bucket lifecycle rule is the
backstop for anything the sweep never sees (docs/render-service.md).

The client is boto3 (credentials from the standard AWS provider chain). Its calls block: the
worker makes them on its own thread, the render API and the planner through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import redis
import redis.asyncio

from shared.queue.images import ImageRedirect, ImagesNotSaved, ImageStoreUnavailable, Retry
from shared.queue.keys import QueueKeys
from shared.queue.record import JobRecord, image_keys_field
from shared.queue.settings import ImageStoreSettings
from shared.queue.wire import text

log = logging.getLogger("shared.queue.s3")

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

    def __init__(self, settings: ImageStoreSettings, keys: QueueKeys) -> None:
        self.keys = keys
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.presign_seconds = settings.s3_presign_seconds
        self.upload_retry_seconds = settings.s3_upload_retry_seconds
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

    # --- the ImageStore protocol -------------------------------------------------------------------

    def holds(self, record: JobRecord) -> bool:
        return record.image_keys is not None

    def save(
        self, client: redis.Redis, retry: Retry, *, job_id: str, token: str, pngs: list[bytes], ttl_seconds: int
    ) -> dict[str, str]:
        """Upload every PNG under this delivery's keys; the record then names the keys, not the bytes."""
        names = [self.key(job_id, token, n) for n in range(len(pngs))]

        def enter() -> None:
            # Before the first byte goes up: should this run die midway, the sweep still finds its objects.
            with client.pipeline(transaction=False) as pipe:
                self._register(pipe, names, time.time() + ttl_seconds)
                pipe.execute()

        retry(enter, "register images")
        log.info("uploading images", extra={"fields": {"job": job_id, "objects": len(names)}})
        for index, (name, png) in enumerate(zip(names, pngs, strict=True)):
            try:
                retry(
                    lambda name=name, png=png: self.put(name, png),
                    "upload image",
                    transient=is_transient,
                    seconds=self.upload_retry_seconds,
                )
            except Exception as exc:
                where = f"s3://{self.bucket}/{name}"
                error = f"could not store image {index + 1} of {len(names)} in {where}: {describe(exc)}"
                log.error("image upload failed", extra={"fields": {"job": job_id, "error": error}})
                raise ImagesNotSaved(error[:2000]) from exc
        return image_keys_field(names)

    def on_finish(self, pipe: Any, fields: Mapping[str, str], ttl_seconds: int) -> None:
        # The record's TTL restarts now; the objects live exactly as long.
        names = JobRecord.from_fields({"id": "", **fields}).image_keys
        if names:
            self._register(pipe, names, time.time() + ttl_seconds)

    async def read(self, client: redis.asyncio.Redis, record: JobRecord, index: int) -> bytes | None:
        assert record.image_keys is not None
        try:
            return await asyncio.to_thread(self.get, record.image_keys[index])
        except Exception as exc:
            raise _unavailable(exc) from exc

    async def link(self, record: JobRecord, index: int) -> ImageRedirect | None:
        assert record.image_keys is not None
        try:
            # Presigning is local, but it still reads credentials, which may do I/O.
            return ImageRedirect(await asyncio.to_thread(self.presign, record.image_keys[index]))
        except Exception as exc:
            raise _unavailable(exc) from exc

    def _register(self, pipe: Any, object_keys: list[str], expire_at: float) -> None:
        """Buffer: these objects are to be deleted at ``expire_at`` (re-registering moves the time)."""
        if object_keys:
            pipe.zadd(self.keys.image_expiry, {k: expire_at for k in object_keys})

    def sweep(self, client: redis.Redis, now: float | None = None) -> int:
        """Delete objects whose time has come, then forget them; the number deleted.

        Several workers may sweep at once: deleting an object twice is harmless, and a key is dropped
        from the set only after its object is gone, so a sweeper dying midway loses nothing.
        """
        keys = self.keys
        due = [text(k) for k in client.zrangebyscore(keys.image_expiry, "-inf", now or time.time(), 0, SWEEP_BATCH)]
        if not due:
            return 0
        self.delete(due)
        client.zrem(keys.image_expiry, *due)
        log.info("expired images deleted", extra={"fields": {"objects": len(due)}})
        return len(due)


def _unavailable(exc: Exception) -> Exception:
    if not is_transient(exc):
        return exc
    return ImageStoreUnavailable(f"the image store is unavailable ({describe(exc)}); try again shortly")
