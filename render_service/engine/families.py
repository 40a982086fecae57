"""Model families: what kind of denoiser a checkpoint is, chosen apart from the attention backend.

A family says how its pipeline is loaded and how its attention takes the text: SDXL's UNet has
separate cross-attention layers over the text tokens (``cross``); a DiT with joint attention (Flux)
attends over text and image tokens in one sequence (``joint``). The attention backend is the other,
independent choice (:mod:`render_service.engine.backends`); :func:`~.backends.check_attention`
refuses a backend whose constraints do not fit the family. A second family is one more entry here
with its own loader and its own processors, beside the SDXL path, not inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from render_service.engine.loading import load_pipeline

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "ModelFamily", "model_family"]


@dataclass(frozen=True)
class ModelFamily:
    name: str
    attention_layout: str
    """``cross`` or ``joint``: matched against each backend's :attr:`~.backends.Constraints.layouts`."""
    contiguous_condition_tokens: bool
    """Whether its text encoding lays each condition's tokens side by side (Omost's bags do)."""
    load_pipeline: Callable[[str, torch.dtype, str | None], Any]
    """``(model, dtype, config) -> pipeline`` on the CPU; raises ModelNotFoundError."""


def _load_sdxl(model: str, dtype: torch.dtype, config: str | None) -> Any:
    return load_pipeline(model, dtype, config=config)


def _load_flux(model: str, dtype: torch.dtype, config: str | None) -> Any:
    from render_service.engine.flux_loading import load_flux_pipeline

    return load_flux_pipeline(model, dtype, config)


FAMILIES: dict[str, ModelFamily] = {
    "sdxl": ModelFamily("sdxl", attention_layout="cross", contiguous_condition_tokens=True, load_pipeline=_load_sdxl),
    # Flux.1: regional control through masked joint attention (render_service.engine.flux_regional),
    # rendered by FluxEngine (render_service.engine.flux_engine), whose default backend is packed
    # (backends.default_attention). RenderEngine.load refuses a ``joint`` family before loading anything;
    # load_engine picks.
    "flux": ModelFamily("flux", attention_layout="joint", contiguous_condition_tokens=True, load_pipeline=_load_flux),
}
DEFAULT_FAMILY = "sdxl"


def model_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"model family must be one of {', '.join(FAMILIES)}; got {name!r}") from None
