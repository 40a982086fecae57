"""Which jobs can share one UNet batch, and how a job of a batch is handed to the engine.

No torch import: the worker groups queued jobs with :func:`batch_key` before it touches the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.jobs import RenderRequest

OnStep = Callable[[int, int], None]
ShouldCancel = Callable[[], bool]


@dataclass
class RenderTask:
    """One job of :meth:`RenderEngine.render_batch`: its request and its own progress and cancel callbacks."""

    request: RenderRequest
    on_step: OnStep | None = None
    should_cancel: ShouldCancel | None = None


def batch_key(request: RenderRequest) -> tuple[Any, ...]:
    """Jobs with equal keys run the same sampling loop and can be denoised as one UNet batch.

    What must match is what shapes the loop: the latent size, the timesteps (steps, sampler, the
    initial latent's strength), the hires pass and whether there is a CFG half. Canvases, prompts,
    seeds, image counts and guidance scales may all differ: they are per row.
    """
    hires = request.hires_fix.model_dump_json() if request.hires_fix is not None else None
    return (
        request.width,
        request.height,
        request.steps,
        request.sampler,
        request.initial_latent_strength,
        hires,
        request.guidance_scale > 1.0,
    )
