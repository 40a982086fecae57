"""Loading a Flux.1 pipeline on the CPU: a diffusers folder, or ``tiny-flux`` (the random-weight tiny
Flux, built offline on first use). Hub ids and single files are still to come."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from render_service.engine.loading import omost_cache_dir
from render_service.engine.types import ModelNotFoundError

__all__ = ["TINY_FLUX_MODEL", "load_flux_pipeline", "tiny_flux_dir"]

TINY_FLUX_MODEL = "tiny-flux"


def tiny_flux_dir() -> Path:
    """Build (once, offline) and return the tiny Flux's diffusers folder in the omost cache folder."""
    from render_service.engine.tiny_flux import build_tiny_flux

    folder = omost_cache_dir() / "tiny-flux"
    try:
        return build_tiny_flux(folder)
    except (OSError, ImportError) as exc:
        raise ModelNotFoundError(f"model {TINY_FLUX_MODEL!r} could not be built in {folder} ({exc})") from None


def load_flux_pipeline(model: str, dtype: torch.dtype) -> Any:
    """A ``FluxPipeline`` from a diffusers folder; :class:`ModelNotFoundError` says what was wrong."""
    from diffusers import FluxPipeline

    path = tiny_flux_dir() if model == TINY_FLUX_MODEL else Path(model).expanduser()
    if not (path / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"{path} is not a diffusers Flux folder (no model_index.json in it); Flux loads from diffusers "
            "folders (or the name tiny-flux) only so far"
        )
    try:
        return FluxPipeline.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"the diffusers folder {path} is incomplete or not a Flux pipeline ({exc})") from None
