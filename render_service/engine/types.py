"""The engine's public result and error types (no torch import, so callers can catch them cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class RenderResult:
    """The images of one job, their seeds (image i used ``seeds[i]``) and where the time went.

    ``timings`` holds seconds for ``encode`` (text and VAE encoding), ``denoise`` (all UNet steps,
    hires pass included), ``decode`` (VAE decoding) and ``total``.
    """

    images: list[Image.Image]
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)


class RenderCanceled(Exception):
    """``should_cancel()`` returned True; the job stopped between two denoising steps."""


class ModelNotFoundError(Exception):
    """The model could not be found; the message says where we looked and how to provide it."""
