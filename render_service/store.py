"""The API's reads and writes of job state in Redis (the worker has its own, synchronous, side).

All key names and record shapes come from :mod:`shared.queue`, so both sides agree by construction.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from redis.exceptions import ResponseError, WatchError

from shared.jobs import TERMINAL_STATUSES, JobEvent
from shared.queue import (
    EVENT_FIELD,
    JOB_ID_PATTERN,
    MESSAGE_FIELD,
    QueueKeys,
    decode_hash,
    queue_terminal,
    text,
)


class JobNotFound(LookupError):
    http_status = 404  # read by the API's problem handler

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no render job with id {job_id!r} (unknown, or expired after its TTL)")


class JobFinished(Exception):
    """Cancel of a job that already ended."""

    http_status = 409

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"render job {job_id} already ended ({status}); nothing to cancel")
        self.status = status


@dataclass
class QueueStats:
    depth: int = 0
    pending: int = 0
    dead_letter: int = 0
    live_workers: int = 0
    counters: dict[str, float] = field(default_factory=dict)


class JobStore:
    def __init__(self, client: redis.asyncio.Redis, keys: QueueKeys) -> None:
        self.redis = client
        self.keys = keys

    async def record(self, job_id: str) -> dict[str, str]:
        # Ids that can't be ours are "not found" without touching Redis (and can't build odd keys).
        if not JOB_ID_PATTERN.match(job_id):
            raise JobNotFound(job_id)
        raw = await self.redis.hgetall(self.keys.job(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return decode_hash(raw)

    async def image(self, job_id: str, index: int) -> bytes | None:
        data = await self.redis.get(self.keys.image(job_id, index))
        return bytes(data) if data is not None else None

    async def cancel(self, job_id: str) -> dict[str, str]:
        """Cancel a queued job at once; ask a running job's worker to stop at its next step."""
        job_key = self.keys.job(job_id)
        await self.record(job_id)  # 404 before anything else
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(job_key)
                    record = decode_hash(await pipe.hgetall(job_key))
                    if not record:
                        raise JobNotFound(job_id)
                    status = record.get("status", "queued")
                    if status in TERMINAL_STATUSES:
                        await pipe.unwatch()
                        raise JobFinished(job_id, status)
                    ttl = int(record.get("ttl_seconds") or 86400)
                    pipe.multi()
                    pipe.hset(job_key, "cancel_requested", "1")
                    if status == "queued":
                        # Nobody is rendering it: settle now. Its stream entry stays until a worker
                        # meets it, sees "canceled", acks it and sends the webhook.
                        queue_terminal(pipe, self.keys, job_id, "canceled", ttl, message="canceled while queued")
                    await pipe.execute()
                    break
                except WatchError:
                    continue
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
                status = await self.redis.hget(self.keys.job(job_id), "status")
                if status is not None and text(status) not in TERMINAL_STATUSES:
                    continue
                # Ended (or expired) without us seeing the terminal event: read once more, in case
                # it was written between the XREAD and the HGET, then stop.
                answer = await self.redis.xread({key: cursor}, count=100)
                if not answer:
                    return
            for _key, entries in answer:
                for entry_id, fields in entries:
                    cursor = text(entry_id)
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
            entries = await self.redis.xrange(keys.stream, min=f"({start}", max="+", count=page)
            for entry_id, fields in entries:
                place += 1
                start = text(entry_id)
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
            depth, dead, workers, counters = await pipe.execute()
        stats.depth, stats.dead_letter, stats.live_workers = int(depth), int(dead), int(workers)
        stats.counters = {text(k): float(v) for k, v in counters.items()}
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
