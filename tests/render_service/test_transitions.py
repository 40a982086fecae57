"""The state machine's transitions in ``shared.queue`` against a real redis-server, without workers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio

from render_service.store import JobStore
from shared.jobs import RenderRequest
from shared.queue import QueueFull, QueueKeys, QueueSettings, RenderQueue, submit
from tests.render_service.helpers import body, unique_prefix
from tests.support import RedisServer

REQUEST = RenderRequest.model_validate(body())


def run(redis_server: RedisServer, scenario: Callable[[redis.asyncio.Redis], Awaitable[None]]) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url, max_connections=200)
        try:
            await scenario(client)
        finally:
            await client.aclose()

    asyncio.run(main())


async def try_submit(
    client: redis.asyncio.Redis, prefix: str, limit: int, webhook_url: str | None = None
) -> str | None:
    try:
        submitted = await submit(client, REQUEST, prefix=prefix, max_queue_depth=limit, webhook_url=webhook_url)
    except QueueFull:
        return None
    return submitted.job_id


def test_a_burst_of_submits_never_exceeds_the_depth_limit(redis_server: RedisServer) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        prefix, limit = unique_prefix("burst"), 10
        for _ in range(3):  # several bursts: the limit holds on every one, not by luck
            answers = await asyncio.gather(*(try_submit(client, prefix, limit) for _ in range(80)))
            assert await client.xlen(QueueKeys(prefix).stream) == limit
            assert sum(job_id is not None for job_id in answers) <= limit

    run(redis_server, scenario)


def test_a_job_canceled_while_queued_leaves_the_stream(redis_server: RedisServer) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        prefix = unique_prefix("cancelq")
        keys = QueueKeys(prefix)
        store = JobStore(client, keys)
        queue = RenderQueue(client, QueueSettings(key_prefix=prefix))
        first = await try_submit(client, prefix, 2, webhook_url="http://127.0.0.1:9/hook")
        second = await try_submit(client, prefix, 2)
        assert first and second and await try_submit(client, prefix, 2) is None

        assert (await queue.cancel(first)).status == "canceled"
        assert await client.xlen(keys.stream) == 1  # at once, not when a worker meets the entry
        stats = await store.stats(live_within=60, now=0)
        assert stats.depth - stats.pending == 1  # what /metrics reports as queued
        assert await try_submit(client, prefix, 2) is not None  # it stopped counting toward the limit
        # No worker will meet its entry: its webhook delivery was queued by the cancel itself.
        deliveries = await client.xrange(keys.webhooks)
        assert [f[b"job_id"].decode() for _, f in deliveries] == [first]
        assert (await queue.read(first)).webhook_status == "pending"

    run(redis_server, scenario)


def test_an_idempotent_burst_creates_one_job(redis_server: RedisServer) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        prefix = unique_prefix("idem")
        answers = await asyncio.gather(
            *(submit(client, REQUEST, prefix=prefix, idempotency_key="same", max_queue_depth=5) for _ in range(30))
        )
        assert len({a.job_id for a in answers}) == 1 and sum(a.created for a in answers) == 1
        assert await client.xlen(QueueKeys(prefix).stream) == 1

    run(redis_server, scenario)
