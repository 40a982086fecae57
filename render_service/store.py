"""The API's reads of job state in Redis; its one write, cancel, is :func:`shared.queue.request_cancel`.

All key names and record fields come from :mod:`shared.queue`, so both sides agree by construction.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import redis.asyncio
from redis.exceptions import ResponseError

from render_service.images import S3Images, describe, image_keys, is_transient
from render_service.metrics import image_store_error_key
from shared.jobs import TERMINAL_STATUSES, JobEvent
from shared.queue import (
    EVENT_FIELD,
    JOB_ID_PATTERN,
    MESSAGE_FIELD,
    JobFinished,
    JobNotFound,
    QueueKeys,
    Rec,
    atransact,
    decode_hash,
    read_entries,
    request_cancel,
    stream_entries,
    text,
)
from shared.service.problems import ServiceError

__all__ = ["ImageRedirect", "ImageStoreUnavailable", "JobFinished", "JobNotFound", "JobStore", "QueueStats"]


@dataclass(frozen=True)
class ImageRedirect:
    """The image is fetched from the object store itself, at this presigned URL."""

    url: str


class ImageStoreUnavailable(ServiceError):
    """The S3 image store can't be reached, or this API has no S3 settings for a job whose images are there."""

    http_status = 503


@dataclass
class QueueStats:
    depth: int = 0
    pending: int = 0
    dead_letter: int = 0
    live_workers: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    heartbeats: dict[str, float] = field(default_factory=dict)
    """Worker name -> Unix time of its last heartbeat (workers silent for long are forgotten)."""
    busy: dict[str, bool] = field(default_factory=dict)
    """Worker name -> whether it holds a job now, for the workers whose description has not expired."""


class JobStore:
    def __init__(
        self, client: redis.asyncio.Redis, keys: QueueKeys, images: S3Images | None = None, redirect: bool = True
    ) -> None:
        self.redis = client
        self.keys = keys
        self.images = images
        self.redirect = redirect

    async def record(self, job_id: str) -> dict[str, str]:
        # Ids that can't be ours are "not found" without touching Redis (and can't build odd keys).
        if not JOB_ID_PATTERN.match(job_id):
            raise JobNotFound(job_id)
        raw = await self.redis.hgetall(self.keys.job(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return decode_hash(raw)

    async def image(self, job_id: str, index: int, record: Mapping[str, str]) -> bytes | ImageRedirect | None:
        """Image ``index`` of a succeeded job: its bytes, where to fetch it, or None once expired.

        The record says where its images are (``image_keys``: S3), so jobs stored before a switch
        of ``OMOST_RENDER_IMAGE_STORE`` stay readable.
        """
        names = image_keys(record)
        if names is None:
            data = await self.redis.get(self.keys.image(job_id, index))
            if isinstance(data, str):
                raise TypeError("the render API's Redis client must not decode replies: images are PNG bytes")
            return data
        if self.images is None:
            raise ImageStoreUnavailable("this job's images are in an S3 image store this API is not configured for")
        try:
            # boto3 blocks; presigning is local, but it still reads credentials, which may do I/O.
            if self.redirect:
                return ImageRedirect(await anyio.to_thread.run_sync(self.images.presign, names[index]))
            return await anyio.to_thread.run_sync(self.images.get, names[index])
        except Exception as exc:
            with contextlib.suppress(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                await self.redis.hincrby(self.keys.metrics, image_store_error_key("read"), 1)
            if not is_transient(exc):
                raise
            raise ImageStoreUnavailable(f"the image store is unavailable ({describe(exc)}); try again shortly") from exc

    async def cancel(self, job_id: str) -> dict[str, str]:
        """Apply :func:`shared.queue.request_cancel` and return the record as it then stands."""
        await self.record(job_id)  # 404 (and the id check) before anything else
        await atransact(
            self.redis, self.keys, job_id, lambda pipe, record: request_cancel(pipe, self.keys, job_id, record)
        )
        return await self.record(job_id)

    async def events(
        self, job_id: str, after: str = "0-0", block_ms: int = 5000
    ) -> AsyncIterator[tuple[str, JobEvent]]:
        """Yield the job's events from ``after`` on, history first, until a terminal status event."""
        key = self.keys.events(job_id)
        cursor = after
        block: int | None = None  # look first without waiting: a resumed, finished job ends at once
        while True:
            answer = await self.redis.xread({key: cursor}, count=100, block=block)
            block = block_ms
            if not answer:
                status = await self.redis.hget(self.keys.job(job_id), Rec.STATUS)
                if status is not None and text(status) not in TERMINAL_STATUSES:
                    continue
                # Ended (or expired) without us seeing the terminal event: read once more, in case
                # it was written between the XREAD and the HGET, then stop.
                answer = await self.redis.xread({key: cursor}, count=100)
                if not answer:
                    return
            for cursor, fields in read_entries(answer):
                event = JobEvent.model_validate_json(decode_hash(fields)[EVENT_FIELD])
                yield cursor, event
                if event.type == "status" and event.status in TERMINAL_STATUSES:
                    return

    async def queue_position(self, job_id: str, page: int = 100) -> int | None:
        """The job's 1-based place among the stream entries no worker has taken yet; None if not among them.

        Entries after the group's last-delivered id are the undelivered ones, in order. The queue
        is bounded (``max_queue_depth``), so reading it is bounded too.
        """
        keys = self.keys
        try:
            groups = await self.redis.xinfo_groups(keys.stream)
        except ResponseError:
            groups = []  # no stream or no group yet: nothing has been delivered
        start = next((text(g["last-delivered-id"]) for g in groups if text(g["name"]) == keys.group), "0-0")
        place = 0
        while True:
            entries = stream_entries(await self.redis.xrange(keys.stream, min=f"({start}", max="+", count=page) or [])
            for entry_id, fields in entries:
                place += 1
                start = entry_id
                try:
                    if json.loads(decode_hash(fields)[MESSAGE_FIELD]).get("job_id") == job_id:
                        return place
                except (KeyError, ValueError, AttributeError):
                    continue  # a malformed entry still holds a place: a worker will meet it
            if len(entries) < page:
                return None

    async def stats(self, live_within: float, now: float) -> QueueStats:
        keys = self.keys
        stats = QueueStats()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.stream)
            pipe.xlen(keys.dead_letter)
            pipe.zcount(keys.workers, now - live_within, "+inf")
            pipe.hgetall(keys.metrics)
            pipe.zrange(keys.workers, 0, -1, withscores=True)
            depth, dead, workers, counters, beats = await pipe.execute()
        stats.depth, stats.dead_letter, stats.live_workers = int(depth), int(dead), int(workers)
        stats.counters = {text(k): float(v) for k, v in counters.items()}
        stats.heartbeats = {text(name): float(at) for name, at in beats}
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in stats.heartbeats:
                pipe.hget(keys.worker(name), "job")
            held = await pipe.execute()
        stats.busy = {name: bool(job) for name, job in zip(stats.heartbeats, held, strict=True) if job is not None}
        try:
            summary = await self.redis.xpending(keys.stream, keys.group)
            stats.pending = int(summary["pending"])
        except ResponseError:
            stats.pending = 0  # no group yet: no worker has ever started
        return stats

    async def live_workers(self, max_age_seconds: float) -> list[dict[str, Any]]:
        names = await self.redis.zrangebyscore(self.keys.workers, time.time() - max_age_seconds, "+inf")
        workers = []
        for name in names:
            info = decode_hash(await self.redis.hgetall(self.keys.worker(text(name))))
            if info:
                workers.append({"name": text(name), **info})
        return workers
