"""What a render job asks for: the canvas plus sampling parameters, validated at the edge.

The same model is the HTTP body of ``POST /v1/renders``, the payload of the queue message and the
engine's input, so a request that passes here can always be rendered.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.canvas import MAX_STRING_LENGTH, Canvas
from shared.contract import RENDER_DEFAULTS

MIN_SIDE = 64
MAX_SIDE = 2048
MAX_STEPS = 150
MAX_IMAGES = 8
MAX_SEED = 2**32 - 1
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""A render job's id: the ids the queue mints are 32 hex characters; other enqueuers may pick any id
matching this (it is also a Redis key part and a URL path segment)."""

Sampler = Literal["dpmpp_2m_karras", "dpmpp_2m", "euler", "euler_ancestral", "ddim", "unipc"]
DEFAULT_SAMPLER: Sampler = "dpmpp_2m_karras"
"""Omost's sampler, DPM++ 2M Karras. On Flux the only sampler is ``euler`` (Euler on its flow-matching
schedule); which ones a model takes is in its entry of ``GET /v1/models``."""

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A model's public name (it is part of a Redis key: its job stream is ``{prefix}renders:{name}``)."""
DEFAULT_MODEL = "default"
"""The name of the model that requests without ``model`` get: the workers that serve no other name."""


def _multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError(f"must be a multiple of 8 (the VAE works on 8x8 pixel blocks); got {value}")
    return value


Side = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE), AfterValidator(_multiple_of_8)]


class HiresFix(BaseModel):
    """Upscale the first pass, re-encode it and denoise again (img2img) for detail."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(default=1.5, gt=1.0, le=2.0, description="Upscale factor of the second pass.")
    steps: int = Field(default=RENDER_DEFAULTS["hires_fix"]["steps"], ge=1, le=MAX_STEPS)
    denoise: float = Field(default=RENDER_DEFAULTS["hires_fix"]["denoise"], gt=0.0, le=1.0)


class FluxOptions(BaseModel):
    """Regional control on Flux (Regional-Prompting-FLUX's knobs); only Flux models take them."""

    model_config = ConfigDict(extra="forbid")

    regional_steps: int | None = Field(
        default=None,
        ge=0,
        le=MAX_STEPS,
        description="How many first steps apply the region mask; None: the first 40 % (rounded up), "
        "as Regional-Prompting-FLUX's 10 of 24.",
    )
    double_interval: int = Field(default=1, ge=1, le=64, description="Every n-th double-stream block is masked.")
    single_interval: int = Field(default=1, ge=1, le=64, description="Every n-th single-stream block is masked.")
    base_ratio: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Weight of the global-prompt-only pass in masked image rows."
    )
    area_weighting: bool = Field(default=True, description="Omost's area factor on image rows' region scores.")
    region_tokens: int = Field(
        default=128, ge=16, le=512, description="T5 tokens of each region's prompt (the global one gets the model's)."
    )


class SamplingParams(BaseModel):
    """How to sample a canvas: everything a render asks for but the canvas. Defaults are Omost's
    (``render_defaults`` in the contract).

    Separate from the canvas so that what needs only these (the work budget, a size check, the
    ``render`` part of ``POST /v1/generations`` before its canvas is planned) never needs a canvas.
    A new sampling choice (e.g. the model family) is one field here; every route and the queue carry it.
    """

    model_config = ConfigDict(extra="forbid")

    width: Side = RENDER_DEFAULTS["width"]
    height: Side = RENDER_DEFAULTS["height"]
    steps: int = Field(default=RENDER_DEFAULTS["steps"], ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(default=RENDER_DEFAULTS["cfg"], ge=0.0, le=30.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="None picks one; image i uses seed + i.")
    num_images: int = Field(default=1, ge=1, le=MAX_IMAGES)
    negative_prompt: str = Field(default=RENDER_DEFAULTS["negative_prompt"], max_length=MAX_STRING_LENGTH)
    sampler: Sampler = DEFAULT_SAMPLER
    hires_fix: HiresFix | None = None
    initial_latent_strength: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Start from the canvas's colour composition instead of pure noise, denoising this much of it.",
    )
    model: str | None = Field(
        default=None,
        pattern=MODEL_NAME_PATTERN,
        description="The model to render with, as GET /v1/models names it; None: the deployment's default model. "
        "Steps, guidance and sampler left unset take that model's defaults.",
    )
    flux: FluxOptions | None = Field(default=None, description="Regional control knobs of Flux models.")


class RenderRequest(SamplingParams):
    """A canvas and how to sample it: on the wire one flat object, the canvas beside the sampling fields."""

    canvas: Canvas

    @classmethod
    def of(cls, canvas: Canvas, sampling: SamplingParams) -> RenderRequest:
        """``canvas`` sampled as ``sampling`` says."""
        # Only the fields set on ``sampling``: the others stay unset, so the served model's defaults fill them.
        return cls(canvas=canvas, **{name: getattr(sampling, name) for name in sampling.model_fields_set})

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(**{name: getattr(self, name) for name in self.model_fields_set if name != "canvas"})


DEFAULT_MAX_MEGAPIXEL_STEPS = 400.0
"""Default work budget of one job: e.g. 1024x1024 x 50 steps x 4 images plus a 1.5x hires pass of
20 steps (~400). Omost's default (896x1152, 25 steps, one image) costs ~26."""


def _hires_side(side: int, scale: float) -> int:
    # The engine's rounding of the second pass's size (render_service.engine: _round8).
    return max(MIN_SIDE, round(side * scale / 8) * 8)


def megapixel_steps(request: SamplingParams) -> float:
    """The work a job asks for: pixels x steps x images, the hires pass included, in megapixel-steps.
    Linear in each factor, so the budget is easy to state; attention grows faster with size."""
    per_image = request.width * request.height * request.steps
    if request.hires_fix is not None:
        hires = request.hires_fix
        per_image += _hires_side(request.width, hires.scale) * _hires_side(request.height, hires.scale) * hires.steps
    return per_image * request.num_images / 1e6


def over_budget(request: SamplingParams, limit: float | None) -> str | None:
    """Why the job exceeds ``limit`` megapixel-steps (None: it fits, or there is no limit)."""
    cost = megapixel_steps(request)
    if limit is None or cost <= limit:
        return None
    return (
        f"this job costs {cost:.1f} megapixel-steps (width x height x steps x num_images, hires pass included); "
        f"the limit is {limit:g}: lower the size, steps, images or hires fix"
    )

# --- Job lifecycle: statuses, events, records and API views -------------------------------------

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
"""A job in one of these states never changes again (until its record expires)."""

MAX_WEBHOOK_URL_LENGTH = 2048


class RenderSubmission(RenderRequest):
    """The body of ``POST /v1/renders``: a :class:`RenderRequest` plus where to report completion.

    The webhook is kept out of :class:`RenderRequest` because the engine never needs it.
    """

    webhook_url: str | None = Field(
        default=None,
        max_length=MAX_WEBHOOK_URL_LENGTH,
        pattern=r"^https?://",
        description="POSTed the final job record (JSON) once the job is succeeded, failed or canceled.",
    )

    def render_request(self) -> RenderRequest:
        # exclude_unset: the fields the client left out stay unset, so the model's defaults can fill them.
        return RenderRequest.model_validate(self.model_dump(exclude={"webhook_url"}, exclude_unset=True))


class Progress(BaseModel):
    step: int = Field(ge=0, description="Sampling steps done so far (across all images and passes).")
    total: int = Field(ge=0)


class JobEvent(BaseModel):
    """One entry of a job's event history, as stored in Redis and sent over Server-Sent Events.

    ``type`` is ``status`` when the job changes state and ``progress`` after each sampling step.
    """

    type: Literal["status", "progress"]
    status: JobStatus
    at: float = Field(description="Unix time in seconds.")
    step: int | None = None
    total: int | None = None
    error: str | None = None
    worker: str | None = None
    message: str | None = None


class RenderJobUrls(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self", serialization_alias="self")
    events: str
    images: list[str] = []


class RenderAccepted(BaseModel):
    """The answer to ``POST /v1/renders`` (202)."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    status: JobStatus
    urls: RenderJobUrls


class RenderJob(BaseModel):
    """A job as ``GET /v1/renders/{id}`` shows it (and as the webhook receives it)."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    status: JobStatus
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress | None = None
    queue_position: int | None = Field(
        default=None, description="While queued: the job's place among those no worker has taken yet (1: next)."
    )
    timings: dict[str, float] = {}
    error: str | None = None
    seeds: list[int] = []
    model: str | None = None
    device: str | None = None
    num_images: int = 0
    worker: str | None = None
    deliveries: int = 0
    cancel_requested: bool = False
    webhook: str | None = Field(
        default=None,
        description="How the webhook delivery stands: pending, retrying: ..., delivered: ..., rejected: ..., "
        "refused: ... or failed after N attempts: ...",
    )
    webhook_attempts: int = Field(default=0, description="POSTs made so far for the webhook delivery.")
    urls: RenderJobUrls
    request: RenderRequest

