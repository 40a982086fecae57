"""``GET /v1/conversations/{id}``: the turns a server-side conversation holds."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from planner_service.conversations import CONVERSATION_ID_PATTERN, ConversationNotFound
from planner_service.dependencies import StoreDep
from planner_service.schemas import Conversation
from shared.service.auth import caller, require_token
from shared.service.routing import StrictRoute

router = APIRouter(
    prefix="/v1/conversations", tags=["conversations"], dependencies=[Depends(require_token)], route_class=StrictRoute
)


@router.get("/{conversation_id}", response_model=Conversation, responses={404: {"description": "Unknown or expired."}})
async def get_conversation(
    conversation_id: Annotated[str, Path(max_length=64, description="The conversation_id a plan returned.")],
    store: StoreDep,
    request: Request,
) -> Conversation:
    """The conversation's turns (user words, assistant code), oldest first. Another token's
    conversation is a 404, exactly like an unknown id."""
    if not CONVERSATION_ID_PATTERN.match(conversation_id):
        raise ConversationNotFound(conversation_id)  # ids that cannot be ours are unknown, like the rest
    return Conversation(id=conversation_id, turns=await store.get(conversation_id, caller(request)))
