"""The last conversation, kept in the cache folder so that ``omost edit`` can continue it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from shared.plans import ChatTurn

LAST_CONVERSATION = "last_conversation.json"


class Conversation(BaseModel):
    planner_url: str
    conversation_id: str | None = None
    history: list[ChatTurn] = []

    def followed_by(self, prompt: str, code: str, *, planner_url: str, conversation_id: str | None) -> Conversation:
        turns = [ChatTurn(role="user", content=prompt), ChatTurn(role="assistant", content=code)]
        return Conversation(planner_url=planner_url, conversation_id=conversation_id, history=[*self.history, *turns])


def remember(cache: Path, conversation: Conversation) -> None:
    (cache / LAST_CONVERSATION).write_text(conversation.model_dump_json())


def recall(cache: Path) -> Conversation | None:
    path = cache / LAST_CONVERSATION
    try:
        return Conversation.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None
