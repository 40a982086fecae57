"""Where a succeeded job's PNGs live: the :class:`ImageStore` protocol, and :class:`RedisImages`, the
default store (each PNG a string key beside the record). The S3 store is :mod:`shared.queue.s3`.

A worker saves a job's PNGs before the ``finish`` transaction that marks it ``succeeded`` (so every
image a record counts is readable) and the store says which record fields name them; readers (the
render API, the planner) ask the store the record names. A new store is one module implementing
this protocol plus its choice in :func:`shared.queue.connect.image_stores`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis
import redis.asyncio

from shared.queue.keys import QueueKeys
from shared.queue.record import JobRecord

T = TypeVar("T")
Retry = Callable[..., Any]
"""The worker's retry policy: ``retry(call, what, *, transient=..., seconds=...)`` runs ``call`` until it
succeeds, retrying what ``transient`` accepts for ``seconds`` (see render_service.worker.retry)."""


@dataclass(frozen=True)
class ImageRedirect:
    """The image is fetched from the object store itself, at this presigned URL."""

    url: str


class ImageStoreUnavailable(Exception):
    """The image store can't be reached, or this service has no settings for the store a job's images are in."""

    http_status = 503


class ImagesNotSaved(Exception):
    """A store gave up saving a job's PNGs; the message is the job's ``error``."""


class ImageStore(Protocol):
    """One place a job's PNGs can live."""

    def holds(self, record: JobRecord) -> bool:
        """Whether ``record``'s images are in this store."""
        ...

    def save(
        self, client: redis.Redis, retry: Retry, *, job_id: str, token: str, pngs: list[bytes], ttl_seconds: int
    ) -> dict[str, str]:
        """Write the PNGs of the delivery ``token`` (worker, blocking); the record fields ``finish`` adds.
        Raises :class:`ImagesNotSaved` when the store keeps failing."""
        ...

    def on_finish(self, pipe: Any, fields: Mapping[str, str], ttl_seconds: int) -> None:
        """Buffer, inside the ``finish`` transaction, what must change with it (e.g. the images' expiry)."""
        ...

    async def read(self, client: redis.asyncio.Redis, record: JobRecord, index: int) -> bytes | None:
        """Image ``index`` of ``record``: its bytes, or None once expired."""
        ...

    async def link(self, record: JobRecord, index: int) -> ImageRedirect | None:
        """A URL the client may fetch the image from itself; None: this store serves bytes only."""
        ...

    def sweep(self, client: redis.Redis) -> int:
        """Delete what has expired and the store does not expire by itself; the number deleted."""
        ...


class RedisImages:
    """PNGs as ``{p}render:{id}:image:{n}`` strings with the record's TTL: nothing to sweep, no URL."""

    def __init__(self, keys: QueueKeys) -> None:
        self.keys = keys

    def holds(self, record: JobRecord) -> bool:
        return record.image_keys is None

    def save(
        self, client: redis.Redis, retry: Retry, *, job_id: str, token: str, pngs: list[bytes], ttl_seconds: int
    ) -> dict[str, str]:
        def write() -> None:
            with client.pipeline(transaction=False) as pipe:
                for index, png in enumerate(pngs):
                    pipe.set(self.keys.image(job_id, index), png, ex=ttl_seconds)
                pipe.execute()

        retry(write, "store images")
        return {}

    def on_finish(self, pipe: Any, fields: Mapping[str, str], ttl_seconds: int) -> None:
        return None

    async def read(self, client: redis.asyncio.Redis, record: JobRecord, index: int) -> bytes | None:
        data = await client.get(self.keys.image(record.id, index))
        if isinstance(data, str):
            raise TypeError("queue clients must not decode replies: images are PNG bytes (shared.queue.connect)")
        return data

    async def link(self, record: JobRecord, index: int) -> ImageRedirect | None:
        return None

    def sweep(self, client: redis.Redis) -> int:
        return 0
