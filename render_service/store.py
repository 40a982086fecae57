"""The API's reads of job state in Redis; its one write, cancel, is :func:`shared.queue.request_cancel`.

All key names and record fields come from :mod:`shared.queue`, so both sides agree by construction.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from redis.exceptions import ResponseError

from shared.jobs import TERMINAL_STATUSES, JobEvent
from shared.queue import (
    EVENT_FIELD,
    JOB_ID_PATTERN,
    JobFinished,
    JobNotFound,
    QueueKeys,
    Rec,
    atransact,
    decode_hash,
    request_cancel,
    text,
)

__all__ = ["JobFinished", "JobNotFound", "JobStore", "QueueStats"]


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
            for _key, entries in answer:
                for entry_id, fields in entries:
                    cursor = text(entry_id)
                    event = JobEvent.model_validate_json(decode_hash(fields)[EVENT_FIELD])
                    yield cursor, event
                    if event.type == "status" and event.status in TERMINAL_STATUSES:
                        return

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
