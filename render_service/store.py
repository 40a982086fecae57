"""What the API's probes and admin views read about the queue as a whole: each model's depth and running
jobs, dead letters, counters, live workers. Everything about one job is :class:`shared.queue.RenderQueue`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from redis.exceptions import ResponseError

from shared.jobs import DEFAULT_MODEL
from shared.queue import QueueKeys, decode_hash, text
from shared.queue.models import queued_models

__all__ = ["JobStore", "ModelQueue", "QueueStats"]


@dataclass
class ModelQueue:
    """One model's stream: its entries (queued or running) and those a worker holds (running)."""

    depth: int = 0
    pending: int = 0


@dataclass
class QueueStats:
    queues: dict[str, ModelQueue] = field(default_factory=lambda: {DEFAULT_MODEL: ModelQueue()})
    """Model name -> its stream (:func:`shared.queue.models.queued_models`: the default model's always)."""
    dead_letter: int = 0
    live_workers: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    heartbeats: dict[str, float] = field(default_factory=dict)
    """Worker name -> Unix time of its last heartbeat (workers silent for long are forgotten)."""
    busy: dict[str, bool] = field(default_factory=dict)
    """Worker name -> whether it holds a job now, for the workers whose description has not expired."""

    @property
    def depth(self) -> int:
        """Jobs on every model's stream together: what ``OMOST_QUEUE_MAX_DEPTH`` bounds per model."""
        return sum(queue.depth for queue in self.queues.values())

    @property
    def pending(self) -> int:
        """Jobs running, all models together."""
        return sum(queue.pending for queue in self.queues.values())


class JobStore:
    """The queue's aggregate state (not one job's: that is :class:`shared.queue.RenderQueue`)."""

    def __init__(self, client: redis.asyncio.Redis, keys: QueueKeys) -> None:
        self.redis = client
        self.keys = keys

    async def stats(self, live_within: float, now: float) -> QueueStats:
        keys = self.keys
        stats = QueueStats()
        models = await queued_models(self.redis, keys)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.dead_letter)
            pipe.zcount(keys.workers, now - live_within, "+inf")
            pipe.hgetall(keys.metrics)
            pipe.zrange(keys.workers, 0, -1, withscores=True)
            for model in models:
                stream = keys.stream_of(model)
                pipe.xlen(stream)
                pipe.xpending(stream, keys.group)
            # A stream with no group yet (no worker of that model ever started) answers NOGROUP.
            dead, workers, counters, beats, *streams = await pipe.execute(raise_on_error=False)
        for answer in (dead, workers, counters, beats):
            if isinstance(answer, Exception):
                raise answer
        stats.dead_letter, stats.live_workers = int(dead), int(workers)
        stats.counters = {text(k): float(v) for k, v in counters.items()}
        stats.heartbeats = {text(name): float(at) for name, at in beats}
        stats.queues = {}
        for model, depth, pending in zip(models, streams[::2], streams[1::2], strict=True):
            if isinstance(depth, Exception):
                raise depth
            if isinstance(pending, ResponseError):
                running = 0  # no group yet: no worker of this model has ever started
            elif isinstance(pending, Exception):
                raise pending
            else:
                running = int(pending["pending"])
            stats.queues[model] = ModelQueue(int(depth), running)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in stats.heartbeats:
                pipe.hget(keys.worker(name), "job")
            held = await pipe.execute()
        stats.busy = {name: bool(job) for name, job in zip(stats.heartbeats, held, strict=True) if job is not None}
        return stats

    async def live_workers(self, max_age_seconds: float) -> list[dict[str, Any]]:
        names = await self.redis.zrangebyscore(self.keys.workers, time.time() - max_age_seconds, "+inf")
        workers = []
        for name in names:
            info = decode_hash(await self.redis.hgetall(self.keys.worker(text(name))))
            if info:
                workers.append({"name": text(name), **info})
        return workers
