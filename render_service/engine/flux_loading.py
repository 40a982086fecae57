"""Loading a Flux.1 pipeline: a diffusers folder on the CPU (hub ids and single files are still to come)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from render_service.engine.types import ModelNotFoundError

__all__ = ["load_flux_pipeline"]


def load_flux_pipeline(model: str, dtype: torch.dtype) -> Any:
    """A ``FluxPipeline`` from a diffusers folder; :class:`ModelNotFoundError` says what was wrong."""
    from diffusers import FluxPipeline

    path = Path(model).expanduser()
    if not (path / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"{path} is not a diffusers Flux folder (no model_index.json in it); Flux loads from diffusers "
            "folders only so far (render_service.engine.tiny_flux.build_tiny_flux makes a tiny one)"
        )
    try:
        return FluxPipeline.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"the diffusers folder {path} is incomplete or not a Flux pipeline ({exc})") from None
