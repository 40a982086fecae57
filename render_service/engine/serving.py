"""Loading whichever engine a checkpoint needs, and what a worker registers about it.

:func:`load_engine` reads the family from the checkpoint (:func:`~.detect.detect_family`) and loads the
SDXL :class:`~.engine.RenderEngine` or the :class:`~.flux_engine.FluxEngine`; both offer the worker the
same face (:class:`Engine`). :func:`model_info` is what ``GET /v1/models`` lists about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, get_args

from render_service.engine.backends import DEFAULT_ATTENTION
from render_service.engine.batching import RenderTask
from render_service.engine.detect import detect_family
from render_service.engine.types import RenderResult
from shared.contract import RENDER_DEFAULTS
from shared.jobs import DEFAULT_SAMPLER, Sampler
from shared.models import ModelInfo

__all__ = ["Engine", "load_engine", "model_info"]


class Engine(Protocol):
    """What the worker uses of an engine, whichever the family."""

    model_name: str
    device: str
    attention: str

    def render_batch(self, tasks: Sequence[RenderTask]) -> list[RenderResult | Exception]: ...

    def warm_up(self, sizes: Sequence[tuple[int, int]] = ..., *, num_images: int = ..., steps: int = ...) -> float: ...


def load_engine(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cpu_offload: bool = False,
    config: str | None = None,
    vae: str | None = None,
    compile: bool = False,
    attention: str | None = None,
) -> Any:
    """The engine for ``model``'s family, loaded once per process; ``attention`` None is the family's
    default backend (``sdpa`` on SDXL, ``packed`` on Flux). Raises ``ModelNotFoundError`` (also for a
    checkpoint of a family we cannot place) and ``AttentionConfigError`` before loading anything."""
    if detect_family(model) == "flux":
        from render_service.engine.flux_engine import FluxEngine

        if vae is not None:
            raise ValueError("OMOST_RENDER_VAE replaces an SDXL VAE; Flux's 16-channel VAE comes with its checkpoint")
        return FluxEngine.load(
            model, device=device, dtype=dtype, cpu_offload=cpu_offload, config=config, compile=compile,
            attention=attention,
        )  # fmt: skip
    from render_service.engine.engine import RenderEngine

    return RenderEngine.load(
        model, device=device, dtype=dtype, cpu_offload=cpu_offload, config=config, vae=vae, compile=compile,
        attention=attention or DEFAULT_ATTENTION,
    )  # fmt: skip


def model_info(engine: Any, name: str) -> ModelInfo:
    """The registration of ``engine`` under ``name``: its family, defaults, size multiple, samplers, options."""
    if hasattr(engine, "model_info"):  # FluxEngine describes itself
        info: ModelInfo = engine.model_info(name)
        return info
    return ModelInfo(
        name=name,
        family="sdxl",
        source=engine.model_name,
        default_steps=RENDER_DEFAULTS["steps"],
        default_guidance_scale=RENDER_DEFAULTS["cfg"],
        default_sampler=DEFAULT_SAMPLER,
        samplers=list(get_args(Sampler)),
        size_multiple=8,
        options=["negative_prompt", "hires_fix", "initial_latent_strength"],
    )
