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


class RegionChange(BaseModel):
    """One region an edit added, removed or changed (see ``shared.canvas_diff``)."""

    kind: Literal["added", "removed", "changed"]
    index: int = Field(description="The region's index in the new canvas (added, changed) or the previous (removed).")
    description: str = Field(description="The region's description (the new one, or the removed one's).")
    fields: list[str] = Field(default=[], description="The changed field names; empty unless kind is 'changed'.")


class CanvasChanges(BaseModel):
    """What an edit changed between the previous canvas and the new one."""

    global_fields: list[str] = Field(default=[], description="Names of the changed global-description fields.")
    regions: list[RegionChange] = []

    @property
    def empty(self) -> bool:
        return not self.global_fields and not self.regions


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
    changes: CanvasChanges | None = Field(
        default=None, description="What this edit changed in the previous canvas; null when there was none."
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
