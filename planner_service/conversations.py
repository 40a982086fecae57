"""Conversations kept server-side in Redis: the turns (user words, assistant code) under an id, with a TTL.

One JSON string per conversation at ``{prefix}conversation:{id}``: ``{"owner", "turns"}``; every write
refreshes the TTL, so a conversation lives ``ttl`` seconds after its last turn. A conversation belongs to
the credential that created it (as a job does): another token finds no such conversation, a 404 exactly
like an unknown id. (A bare list of turns, the older form, names no owner: only the admin, or anyone
without auth, sees it.)
"""

from __future__ import annotations

import json
import uuid

import redis.asyncio
from redis.exceptions import RedisError

from shared.plans import CONVERSATION_ID_PATTERN, MAX_HISTORY_TURNS, ChatTurn
from shared.service.auth import Caller

__all__ = ["CONVERSATION_ID_PATTERN", "ConversationNotFound", "ConversationStore", "StoreUnavailable"]


class ConversationNotFound(LookupError):
    http_status = 404  # read by the API's problem handler

    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"conversation {conversation_id!r} does not exist or has expired")
        self.conversation_id = conversation_id


class StoreUnavailable(RuntimeError):
    http_status = 503


class ConversationStore:
    def __init__(self, redis_client: redis.asyncio.Redis, *, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    def key(self, conversation_id: str) -> str:
        return f"{self.prefix}conversation:{conversation_id}"

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    async def get(self, conversation_id: str, caller: Caller) -> list[ChatTurn]:
        """The turns of a conversation ``caller`` may see; :class:`ConversationNotFound` otherwise."""
        try:
            raw = await self.redis.get(self.key(conversation_id))
        except RedisError as exc:
            raise StoreUnavailable(f"the conversation store (Redis) is unavailable: {exc}") from exc
        if raw is None:
            raise ConversationNotFound(conversation_id)
        stored = json.loads(raw)
        owner, turns = (None, stored) if isinstance(stored, list) else (stored.get("owner"), stored["turns"])
        if not caller.may_see(owner):
            raise ConversationNotFound(conversation_id)
        return [ChatTurn.model_validate(t) for t in turns]

    async def save(self, conversation_id: str, turns: list[ChatTurn], owner: str) -> None:
        kept = turns[-MAX_HISTORY_TURNS:]
        payload = json.dumps({"owner": owner, "turns": [t.model_dump() for t in kept]})
        try:
            await self.redis.set(self.key(conversation_id), payload, ex=self.ttl_seconds)
        except RedisError as exc:
            raise StoreUnavailable(f"the conversation store (Redis) is unavailable: {exc}") from exc
