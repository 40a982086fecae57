"""What a render job asks for: the canvas plus sampling parameters, validated at the edge.

The same model is the HTTP body of ``POST /v1/renders``, the payload of the queue message and the
engine's input, so a request that passes here can always be rendered.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.canvas import MAX_STRING_LENGTH, Canvas
from shared.contract import RENDER_DEFAULTS

MIN_SIDE = 64
MAX_SIDE = 2048
MAX_STEPS = 150
MAX_IMAGES = 8
MAX_SEED = 2**32 - 1

Sampler = Literal["dpmpp_2m_karras", "dpmpp_2m", "euler", "euler_ancestral", "ddim", "unipc"]
DEFAULT_SAMPLER: Sampler = "dpmpp_2m_karras"
"""Omost's sampler, DPM++ 2M Karras."""


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


class RenderRequest(BaseModel):
    """A canvas and how to sample it. Defaults are Omost's (``render_defaults`` in the contract)."""

    model_config = ConfigDict(extra="forbid")

    canvas: Canvas
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
