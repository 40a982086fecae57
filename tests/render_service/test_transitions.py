"""The state machine's transitions in ``shared.queue`` against a real redis-server, without workers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import redis as redis_sync
import redis.asyncio

from render_service.store import JobStore
from shared.jobs import RenderRequest
from shared.queue import (
    Claim,
    Delivery,
    QueueFull,
    QueueKeys,
    QueueSettings,
    RenderQueue,
    SyncRenderQueue,
    claim,
    decode_message,
    fail,
    finish,
    read_entries,
    submit,
)
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


def test_a_transition_retried_after_its_reply_was_lost_writes_nothing_twice(redis_server: RedisServer) -> None:
    """A failover can cut the reply of an EXEC that applied: the worker then runs the same transition
    again on the new primary. claim and finish recognise their own applied run; a later finish by a
    stale delivery never moves the terminal status."""
    prefix = unique_prefix("retried")
    keys = QueueKeys(prefix)
    job_id = asyncio.run(_submit_one(redis_server.url, prefix, webhook_url="http://127.0.0.1:9/hook"))
    client = redis_sync.Redis.from_url(redis_server.url)
    queue = SyncRenderQueue(client, keys)
    client.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    ((entry_id, fields),) = read_entries(client.xreadgroup(keys.group, "w", {keys.stream: ">"}, count=1))
    message = decode_message(fields)

    def claim_it(pipe: Any, record: dict[str, str]) -> Claim:
        return claim(pipe, keys, record, entry_id=entry_id, message=message, worker="w", token="w/1", max_deliveries=3)

    first, again = queue.transact(job_id, claim_it), queue.transact(job_id, claim_it)
    assert first == again and first.token == "w/1" and first.deliveries == 1
    delivery = Delivery(entry_id, message, "w/1", 1)

    def finish_it(pipe: Any, record: dict[str, str]) -> bool:
        return finish(pipe, keys, record, delivery, "succeeded", worker="w")

    assert queue.transact(job_id, finish_it) and queue.transact(job_id, finish_it)
    events = [json.loads(f[b"event"]) for _, f in client.xrange(keys.events(job_id))]
    assert [e["status"] for e in events if e["type"] == "status"] == ["queued", "running", "succeeded"]
    assert client.xlen(keys.webhooks) == 1, "one webhook delivery, not one per run of finish"
    assert int(client.hget(keys.metrics, "jobs_total:succeeded") or 0) == 1

    def fail_it(pipe: Any, record: dict[str, str]) -> bool:
        return fail(pipe, keys, record, delivery, "late", worker="w")

    assert queue.transact(job_id, fail_it)  # a late failure of the same delivery: the end stands
    assert client.hget(keys.job(job_id), "status") == b"succeeded"


async def _submit_one(url: str, prefix: str, webhook_url: str) -> str:
    client = redis.asyncio.Redis.from_url(url)
    try:
        return (await submit(client, REQUEST, prefix=prefix, webhook_url=webhook_url)).job_id
    finally:
        await client.aclose()
