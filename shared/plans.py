"""The planner's HTTP models: what ``POST /v1/plans`` and ``POST /v1/generations`` take and answer.

They live in ``shared`` so that the typed client (and any app) can use them without FastAPI.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.canvas import Canvas
from shared.jobs import MAX_SEED, JobStatus, RenderJobUrls, SamplingParams

MAX_PROMPT_CHARS = 4000
MAX_HISTORY_TURNS = 50
CONVERSATION_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ChatTurn(BaseModel):
    """One earlier message: the user's words or the assistant's canvas code."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(min_length=1, max_length=64_000)


class PlanRequest(BaseModel):
    """``POST /v1/plans``. Here, not in the planner, so that a client checks a request before sending it."""

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
    """``POST /v1/generations``: a plan, then its render queued."""

    render: SamplingParams = Field(
        default_factory=SamplingParams,
        description="How to sample the planned canvas (width, height, steps, seed, ...; as in POST /v1/renders).",
    )


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
    """The answer to ``POST /v1/plans``; with ``stream=true``, the data of the stream's last event, ``plan``."""

    event: ClassVar[Literal["plan"]] = "plan"

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


# --- The plan stream: ``POST /v1/plans`` with ``stream=true`` -------------------------------------
# Each Server-Sent Event is one of these models: the SSE ``event`` field is the model's ``event``
# name and ``data`` its JSON. The stream is deltas and retries, then exactly one ``plan`` or ``error``.


class PlanDelta(BaseModel):
    """A piece of the plan's code as the model writes it (one token, with llama.cpp and vLLM)."""

    event: ClassVar[Literal["delta"]] = "delta"
    text: str


class PlanRetry(BaseModel):
    """The answer did not parse: attempt ``attempt`` (2 for the first retry) starts, with a new seed;
    the text streamed so far is dropped."""

    event: ClassVar[Literal["retry"]] = "retry"
    attempt: int = Field(ge=2)
    error: str = Field(description="Why the previous answer did not parse.")


class PlanError(BaseModel):
    """The planner's failure once the stream has begun, as its HTTP error body (an RFC 9457 problem:
    a failed parse adds ``parse_error``, ``raw`` and ``attempts``)."""

    model_config = ConfigDict(extra="allow")

    event: ClassVar[Literal["error"]] = "error"
    type: str = "about:blank"
    title: str = "Error"
    status: int = Field(default=502, ge=400, le=599)
    detail: str


PlanEvent = PlanDelta | PlanRetry | PlanResult | PlanError
PLAN_EVENTS: dict[str, type[PlanEvent]] = {
    model.event: model for model in (PlanDelta, PlanRetry, PlanResult, PlanError)
}
"""Every event of the stream by its SSE name; the playground's reader handles each (a test checks)."""


def plan_event_sse(event: PlanEvent) -> dict[str, str]:
    """``event`` as one Server-Sent Event (the fields ``sse_starlette`` sends)."""
    return {"event": event.event, "data": event.model_dump_json()}


def read_plan_event(name: str, data: str) -> PlanEvent | None:
    """The event a Server-Sent Event carries; None for an event this client does not know (a newer
    server's). A known event whose data does not fit its model raises ``ValueError``."""
    model = PLAN_EVENTS.get(name)
    if model is None:
        return None
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise ValueError(f"the planner sent a malformed {name!r} event: {exc}") from exc
