"""Request bodies of the planner API. The answers are the shared models in ``shared.plans``, which
the typed client reads."""

from __future__ import annotations

from pydantic import BaseModel

# The request models are the shared contract's, so that a client checks a request before sending it.
from shared.plans import ChatTurn, GenerationRequest, PlanRequest, PlanResult


class Conversation(BaseModel):
    """``GET /v1/conversations/{id}``: the turns kept under a conversation id, oldest first."""

    id: str
    turns: list[ChatTurn]


PlanResponse = PlanResult
"""The answer of ``POST /v1/plans`` is the shared model, so the typed client reads every field."""

__all__ = ["Conversation", "GenerationRequest", "PlanRequest", "PlanResponse"]
