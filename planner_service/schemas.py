"""Request bodies of the planner API. The answers are the shared models in ``shared.plans``, which
the typed client reads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from planner_service.conversations import CONVERSATION_ID_PATTERN
from shared.canvas import Canvas
from shared.jobs import MAX_SEED
from shared.plans import MAX_HISTORY_TURNS, MAX_PROMPT_CHARS, ChatTurn, PlanResult


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw, or how to edit.")
    history: list[ChatTurn] = Field(
        default_factory=list, max_length=MAX_HISTORY_TURNS, description="Earlier turns, oldest first."
    )
    conversation_id: str | None = Field(
        default=None, pattern=CONVERSATION_ID_PATTERN.pattern, description="Continue a server-side conversation."
    )
    canvas: Canvas | None = Field(default=None, description="Edit this canvas (the previous assistant turn).")
    # MAX_SEED itself is llama.cpp's "random seed" marker: a plan's seed stays below it.
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED - 1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(default=None, ge=16, le=32768)
    stream: bool = Field(default=False, description="Server-Sent Events: text deltas, then the plan.")

    @field_validator("prompt")
    @classmethod
    def _has_words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is empty")
        return value

    @model_validator(mode="after")
    def _one_history(self) -> PlanRequest:
        if self.history and self.conversation_id:
            raise ValueError("give either history (inline turns) or conversation_id (server-side turns), not both")
        return self


class GenerationRequest(PlanRequest):
    render: dict[str, Any] = Field(
        default_factory=dict, description="Render parameters (width, height, steps, seed, ...; see POST /v1/renders)."
    )


class Conversation(BaseModel):
    """``GET /v1/conversations/{id}``: the turns kept under a conversation id, oldest first."""

    id: str
    turns: list[ChatTurn]


PlanResponse = PlanResult
"""The answer of ``POST /v1/plans`` is the shared model, so the typed client reads every field."""
