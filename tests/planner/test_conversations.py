"""Server-side conversations in a private Redis: stored with a TTL, gone after it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio

from planner_service.conversations import ConversationNotFound, ConversationStore
from shared.plans import MAX_HISTORY_TURNS, ChatTurn
from shared.service.auth import Caller
from tests.support import RedisServer

ANYONE = Caller("public", sees_all=True)  # no auth: every caller sees every conversation


def test_conversation_is_kept_then_expires(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
        store = ConversationStore(client, prefix=f"test-conv-{uuid.uuid4().hex[:8]}:", ttl_seconds=1)
        conversation_id = store.new_id()
        turns = [ChatTurn(role="user", content="a cat"), ChatTurn(role="assistant", content="code")]
        await store.save(conversation_id, turns, ANYONE.owner)
        assert await store.get(conversation_id, ANYONE) == turns
        assert 0 < await client.pttl(store.key(conversation_id)) <= 1000
        await asyncio.sleep(1.3)
        with pytest.raises(ConversationNotFound, match="expired"):
            await store.get(conversation_id, ANYONE)
        await client.aclose()

    asyncio.run(scenario())


def test_long_conversations_keep_their_newest_turns(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
        store = ConversationStore(client, prefix=f"test-conv-{uuid.uuid4().hex[:8]}:", ttl_seconds=60)
        turns = [ChatTurn(role="user" if i % 2 == 0 else "assistant", content=str(i)) for i in range(120)]
        await store.save("c1", turns, ANYONE.owner)
        kept = await store.get("c1", ANYONE)
        assert len(kept) == MAX_HISTORY_TURNS and kept[-1].content == "119"
        await client.aclose()

    asyncio.run(scenario())


def test_a_conversation_is_seen_only_by_its_owner(redis_server: RedisServer) -> None:
    """Issue 26 §4: with auth on, another credential's conversation is "not found", like an unknown id."""

    async def scenario() -> None:
        client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
        store = ConversationStore(client, prefix=f"test-conv-{uuid.uuid4().hex[:8]}:", ttl_seconds=60)
        turns = [ChatTurn(role="user", content="a cat")]
        await store.save("c1", turns, "owner-a")
        assert await store.get("c1", Caller("owner-a", sees_all=False)) == turns
        assert await store.get("c1", Caller("admin", sees_all=True)) == turns
        with pytest.raises(ConversationNotFound):
            await store.get("c1", Caller("owner-b", sees_all=False))
        await client.set(store.key("old"), '[{"role": "user", "content": "a dog"}]')  # the older form
        assert len(await store.get("old", ANYONE)) == 1
        with pytest.raises(ConversationNotFound):
            await store.get("old", Caller("owner-a", sees_all=False))
        await client.aclose()

    asyncio.run(scenario())
