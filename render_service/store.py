"""What the API's probes and admin views read about the queue as a whole: depth, pending, dead letters,
counters, live workers. Everything about one job is :class:`shared.queue.RenderQueue`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from redis.exceptions import ResponseError

from shared.queue import QueueKeys, decode_hash, text

__all__ = ["JobStore", "QueueStats"]


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
    """The queue's aggregate state (not one job's: that is :class:`shared.queue.RenderQueue`)."""

    def __init__(self, client: redis.asyncio.Redis, keys: QueueKeys) -> None:
        self.redis = client
        self.keys = keys

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
