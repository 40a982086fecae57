"""The model registry: which models the workers serve (``{p}models``, ``{p}model:{name}``), renewed by
every worker heartbeat and expiring when no worker renews it, and read by ``GET /v1/models`` and by
every submit (a job for a model nobody serves is refused, not left queued forever). A submit reads only
the one model it names (:func:`find_model`, one round trip); the whole registry is read to list it."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio

from shared.jobs import DEFAULT_MODEL
from shared.models import ModelInfo
from shared.queue.keys import QueueKeys
from shared.queue.wire import text

__all__ = ["SERVES_FIELD", "find_model", "list_models", "queued_models", "register_model"]

SERVES_FIELD = "serves"
"""The field of a worker's ``{p}worker:{name}`` hash naming the model it serves."""


def register_model(pipe: Any, keys: QueueKeys, info: ModelInfo, ttl_seconds: int) -> None:
    """Buffer one registration of ``info`` (a worker's heartbeat): listed for ``ttl_seconds`` after the last."""
    now = time.time()
    entry = info.model_copy(update={"workers": 0, "last_seen": now})
    pipe.zadd(keys.models, {info.name: now})
    pipe.set(keys.model_info(info.name), entry.model_dump_json(), ex=max(1, ttl_seconds))


async def find_model(client: redis.asyncio.Redis, keys: QueueKeys, name: str) -> tuple[ModelInfo | None, float]:
    """``name``'s registration and the seconds it has left before it expires, in one round trip; ``(None,
    0.0)`` when no worker registered it within its TTL. ``workers`` is not counted (0): a submit needs
    only whether the model is served and what it takes, and counting would read every worker's hash."""
    key = keys.model_info(name)
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        raw, pttl = await pipe.execute()
    if raw is None:
        return None, 0.0
    # PTTL < 0: the key expired between the two commands (-2) or has no expiry (-1, never written so by
    # register_model): either way it may not be trusted beyond this read.
    left = pttl / 1000 if pttl > 0 else 0.0
    return ModelInfo.model_validate_json(raw if isinstance(raw, str) else raw.decode()), left


async def list_models(client: redis.asyncio.Redis, keys: QueueKeys) -> list[ModelInfo]:
    """Every model registered within its TTL, by name, with how many live workers serve it now."""
    names = [text(name) for name in await client.zrange(keys.models, 0, -1)]
    if not names:
        return []
    stored = await client.mget([keys.model_info(name) for name in names])
    await _forget(client, keys, [name for name, raw in zip(names, stored, strict=True) if raw is None])
    counts: dict[str, int] = {}
    workers = [text(name) for name in await client.zrange(keys.workers, 0, -1)]
    if workers:
        async with client.pipeline(transaction=False) as pipe:
            for worker in workers:
                pipe.hget(keys.worker(worker), SERVES_FIELD)
            for served in await pipe.execute():
                if served is not None:  # None: the worker's hash expired (it stopped beating)
                    counts[text(served)] = counts.get(text(served), 0) + 1
    models = []
    for raw in stored:
        if raw is None:
            continue
        info = ModelInfo.model_validate_json(raw if isinstance(raw, str) else raw.decode())
        models.append(info.model_copy(update={"workers": counts.get(info.name, 0)}))
    return sorted(models, key=lambda m: m.name)


async def queued_models(client: redis.asyncio.Redis, keys: QueueKeys) -> list[str]:
    """Every model whose stream the metrics watch, by name: the default model, each one a worker
    registered, and one whose registration expired while jobs still wait on its stream (they stay
    counted until taken or canceled, never silently dropped from the queue depth)."""
    names = [text(name) for name in await client.zrange(keys.models, 0, -1)]
    if names:
        stored = await client.mget([keys.model_info(name) for name in names])
        gone = await _forget(client, keys, [name for name, raw in zip(names, stored, strict=True) if raw is None])
        names = [name for name in names if name not in gone]
    return sorted({DEFAULT_MODEL, *names})


async def _forget(client: redis.asyncio.Redis, keys: QueueKeys, expired: list[str]) -> set[str]:
    """Drop from ``{p}models`` the ``expired`` names whose stream is empty (those with jobs left stay, for
    :func:`queued_models`); returns the names dropped."""
    if not expired:
        return set()
    async with client.pipeline(transaction=False) as pipe:
        for name in expired:
            pipe.xlen(keys.stream_of(name))
        lengths = await pipe.execute()
    gone = {name for name, length in zip(expired, lengths, strict=True) if not length}
    if gone:
        await client.zrem(keys.models, *gone)
    return gone
