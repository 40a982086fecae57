"""Server-side conversations in a private Redis: stored with a TTL, gone after it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio

from planner_service.conversations import ConversationNotFound, ConversationStore
from shared.plans import MAX_HISTORY_TURNS, ChatTurn
from tests.support import RedisServer


def test_conversation_is_kept_then_expires(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
        store = ConversationStore(client, prefix=f"test-conv-{uuid.uuid4().hex[:8]}:", ttl_seconds=1)
        conversation_id = store.new_id()
        turns = [ChatTurn(role="user", content="a cat"), ChatTurn(role="assistant", content="code")]
        await store.save(conversation_id, turns)
        assert await store.get(conversation_id) == turns
        assert 0 < await client.pttl(store.key(conversation_id)) <= 1000
        await asyncio.sleep(1.3)
        with pytest.raises(ConversationNotFound, match="expired"):
            await store.get(conversation_id)
        await client.aclose()

    asyncio.run(scenario())


def test_long_conversations_keep_their_newest_turns(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
        store = ConversationStore(client, prefix=f"test-conv-{uuid.uuid4().hex[:8]}:", ttl_seconds=60)
        turns = [ChatTurn(role="user" if i % 2 == 0 else "assistant", content=str(i)) for i in range(120)]
        await store.save("c1", turns)
        kept = await store.get("c1")
        assert len(kept) == MAX_HISTORY_TURNS and kept[-1].content == "119"
        await client.aclose()

    asyncio.run(scenario())
