"""The MCP tools' inputs and outputs: their JSON schemas are what the agent sees. The bounds are the
contract's (``shared.jobs``, ``shared.plans``), so a tool refuses what the services would."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from shared.canvas import Canvas
from shared.jobs import (
    JOB_ID_PATTERN,
    MAX_IMAGES,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    MODEL_NAME_PATTERN,
    RenderJob,
)
from shared.plans import MAX_PROMPT_CHARS

Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw.")]
Width = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8, description="Image width (multiple of 8).")]
Height = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8, description="Image height (multiple of 8).")]
Steps = Annotated[int | None, Field(ge=1, le=MAX_STEPS, description="Sampling steps; null: the model's default.")]
ModelName = Annotated[
    str | None, Field(pattern=MODEL_NAME_PATTERN, description="A served render model (GET /v1/models); null: default.")
]
Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED, description="Image i uses seed + i; null: random.")]
Images = Annotated[int, Field(ge=1, le=MAX_IMAGES, description="How many images.")]
PlanTokens = Annotated[int | None, Field(ge=16, le=32768, description="Cap on the plan's length in tokens.")]
JobId = Annotated[str, Field(pattern=JOB_ID_PATTERN.pattern, description="The render job's id.")]


class PlanOutput(BaseModel):
    canvas: Canvas = Field(description="The planned canvas (Omost's fields).")
    code: str = Field(description="The same canvas as Omost code.")
    conversation_id: str | None = Field(default=None, description="Pass to edit_plan to continue.")


class JobOutput(BaseModel):
    id: str
    status: str
    progress: str | None = Field(default=None, description="'step/total' while sampling.")
    error: str | None = None
    seeds: list[int] = []
    url: str = Field(description="The job's status URL on the render API.")
    image_urls: list[str] = []

    @classmethod
    def of(cls, job: RenderJob) -> JobOutput:
        progress = f"{job.progress.step}/{job.progress.total}" if job.progress else None
        return cls(id=job.id, status=job.status, progress=progress, error=job.error, seeds=job.seeds,
                   url=job.urls.self_, image_urls=job.urls.images)


class GenerateOutput(BaseModel):
    canvas: Canvas
    code: str
    conversation_id: str | None = None
    job: JobOutput
