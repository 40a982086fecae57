"""The planner's HTTP models: what ``POST /v1/plans`` and ``POST /v1/generations`` take and answer.

They live in ``shared`` so that the typed client (and any app) can use them without FastAPI.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.canvas import Canvas
from shared.jobs import JobStatus, RenderJobUrls

MAX_PROMPT_CHARS = 4000
MAX_HISTORY_TURNS = 50


class ChatTurn(BaseModel):
    """One earlier message: the user's words or the assistant's canvas code."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(min_length=1, max_length=64_000)


class CorrectionOut(BaseModel):
    line: int
    field: str
    original: str
    corrected: str


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class PlanResult(BaseModel):
    """The answer to ``POST /v1/plans``."""

    canvas: Canvas
    code: str
    corrections: list[CorrectionOut] = []
    conversation_id: str | None = None
    usage: Usage = Usage()
    timings: dict[str, float] = {}
    attempts: int = 1
    truncated: bool = Field(
        default=False, description="The answer hit max_new_tokens; the canvas holds its complete calls."
    )


class GenerationAccepted(BaseModel):
    """The answer to ``POST /v1/generations`` (202): the plan, and the render job queued from it."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(description="The render job's id.")
    status: JobStatus
    canvas: Canvas
    code: str
    conversation_id: str | None = None
    urls: RenderJobUrls
