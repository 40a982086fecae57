"""OpenAI's Images API as pydantic models: the body of ``images.generate``, its answer, the model
list and the error shape the OpenAI SDK reads into its exceptions."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.jobs import MAX_IMAGES
from shared.plans import MAX_PROMPT_CHARS

MODEL_ID = "omost"
"""The render service's default model (an LLM-planned, region-controlled render); other served models by name."""
OPENAI_MODELS = ("dall-e-", "gpt-image-")
"""OpenAI's own model names, which apps send by default: they mean the default model, as ``omost`` does."""

SIZE_PATTERN = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
"""ASCII digits only (``\\d`` would take Arabic-Indic ones); matched whole (``fullmatch``: ``$`` alone lets a
trailing newline through)."""


class ImageGenerationRequest(BaseModel):
    """OpenAI's ``images.generate`` body. Parameters that make no sense here are accepted and ignored
    (documented in docs/integrations.md) so apps written for OpenAI need no change."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(
        default=None,
        max_length=256,
        description=f"'{MODEL_ID}', null or an OpenAI model name (dall-e-*, gpt-image-*): the render service's "
        "default model; else a render model's name as GET /v1/models lists it (e.g. a Flux fleet's), which then "
        "renders with its own default steps.",
    )
    n: int | None = Field(default=None, ge=1, le=MAX_IMAGES, description="Images, one render job; 1 when null.")
    size: str | None = Field(default=None, max_length=16, description="'auto' or WxH (multiples of 8, 64-2048).")
    response_format: Literal["b64_json", "url"] | None = None
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] | None = Field(
        default=None, description="Accepted and ignored."
    )
    style: Literal["vivid", "natural"] | None = Field(default=None, description="Accepted and ignored.")
    user: str | None = Field(default=None, max_length=256, description="Accepted; not stored.")
    background: Literal["auto", "opaque"] | None = Field(default=None, description="Transparency is not offered.")
    output_format: Literal["png"] | None = Field(default=None, description="Images are PNG.")
    output_compression: int | None = Field(default=None, ge=0, le=100, description="Accepted and ignored (PNG).")
    moderation: Literal["auto", "low"] | None = Field(default=None, description="Accepted and ignored.")
    stream: Literal[False] | None = Field(default=None, description="Streaming partial images is not offered.")
    partial_images: int | None = Field(default=None, ge=0, le=0, description="Only 0 (no streaming).")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str = Field(description="The planned canvas's global description.")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# --- OpenAI's error shape ------------------------------------------------------------------------


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """Every error of the Images API, as OpenAI sends it."""

    error: OpenAIErrorDetail
    job: dict[str, str] | None = Field(default=None, description="On 504: the render job's id and status URL.")


class ImagesAPIError(Exception):
    """A failure the Images API words itself (a bad size, a render that failed or outlasted the wait)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        job: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = OpenAIErrorDetail(message=message, type=type_, param=param, code=code)
        self.job = job


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorResponse, "description": "A bad parameter (named in error.param)."},
    401: {"model": OpenAIErrorResponse, "description": "Missing or wrong bearer token."},
    404: {"model": OpenAIErrorResponse, "description": "Not found."},
    429: {"model": OpenAIErrorResponse, "description": "The render queue is full, too many calls wait for their "
          "renders, or the token's quota is used up; retry after `Retry-After` seconds."},
    502: {"model": OpenAIErrorResponse, "description": "The plan did not parse, or the render failed."},
    503: {"model": OpenAIErrorResponse, "description": "The LLM or Redis is unreachable."},
    504: {"model": OpenAIErrorResponse, "description": "The render outlasted the timeout; error.job has its URL."},
    500: {"model": OpenAIErrorResponse, "description": "A bug; the service log has the details."},
    # Declared only so that the document's generic 422 does not claim these routes send one.
    422: {"model": OpenAIErrorResponse, "description": "Not sent: a bad body is a 400, as OpenAI answers."},
}
"""The error answers of the routes, for the OpenAPI document."""
