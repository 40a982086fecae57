"""Loading a Flux.1 pipeline on the CPU: a diffusers folder, a hub id, a single transformer file
(``from_single_file``, with the rest of the pipeline from ``config``), or ``tiny-flux`` /
``tiny-flux-schnell`` (the random-weight tiny Flux, [dev]- or [schnell]-shaped, built offline on first use)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from render_service.engine.loading import HUB_ID, _hub_cache, _short, omost_cache_dir
from render_service.engine.types import ModelNotFoundError

__all__ = ["TINY_FLUX_MODEL", "TINY_FLUX_SCHNELL_MODEL", "load_flux_pipeline", "tiny_flux_dir"]

TINY_FLUX_MODEL = "tiny-flux"
TINY_FLUX_SCHNELL_MODEL = "tiny-flux-schnell"
SINGLE_FILE_CONFIGS = {"flux-dev": "black-forest-labs/FLUX.1-dev", "flux-schnell": "black-forest-labs/FLUX.1-schnell"}
"""Where a single transformer file's other components come from when ``config`` is not given."""
HOW_TO_PROVIDE = (
    "Flux loads from a diffusers folder (model_index.json of a FluxPipeline), a hub id such as "
    "'black-forest-labs/FLUX.1-schnell' (pre-fetch with `hf download` and set HF_HUB_OFFLINE=1 offline), or a "
    "single transformer .safetensors file plus config= (OMOST_RENDER_CONFIG) naming a Flux diffusers folder or "
    "hub id for the text encoders and VAE."
)


def tiny_flux_dir(schnell: bool = False) -> Path:
    """Build (once, offline) and return the tiny Flux's diffusers folder in the omost cache folder."""
    from render_service.engine.tiny_flux import build_tiny_flux

    name = TINY_FLUX_SCHNELL_MODEL if schnell else TINY_FLUX_MODEL
    folder = omost_cache_dir() / name
    try:
        return build_tiny_flux(folder, schnell=schnell)
    except (OSError, ImportError) as exc:
        raise ModelNotFoundError(f"model {name!r} could not be built in {folder} ({exc})") from None


def load_flux_pipeline(model: str, dtype: torch.dtype, config: str | None = None) -> Any:
    """A ``FluxPipeline`` on the CPU from whichever form ``model`` takes; :class:`ModelNotFoundError`
    says what was wrong."""
    from diffusers import FluxPipeline

    if model in (TINY_FLUX_MODEL, TINY_FLUX_SCHNELL_MODEL):
        path = tiny_flux_dir(schnell=model == TINY_FLUX_SCHNELL_MODEL)
    else:
        path = Path(model).expanduser()
    if path.is_file():
        return _single_file(path, dtype, config)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{path} is not a diffusers Flux folder (no model_index.json in it). {HOW_TO_PROVIDE}"
            )
        try:
            return FluxPipeline.from_pretrained(str(path), dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"the diffusers folder {path} is incomplete or not a Flux pipeline ({exc}). {HOW_TO_PROVIDE}"
            ) from None
    if not HUB_ID.match(model):
        raise ModelNotFoundError(f"model {model!r} not found: no file or folder at {path.resolve()}. {HOW_TO_PROVIDE}")
    try:
        return FluxPipeline.from_pretrained(model, dtype=dtype)
    except Exception as exc:  # hub errors come in many classes (network, auth, missing files)
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise ModelNotFoundError(
            f"Flux model {model!r} could not be loaded from the hub or its cache at {_hub_cache()}"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''} ({_short(exc)}). {HOW_TO_PROVIDE}"
        ) from None


def _single_file(path: Path, dtype: torch.dtype, config: str | None) -> Any:
    """A single Flux transformer checkpoint (BFL or ComfyUI layout) through diffusers' ``from_single_file``;
    the text encoders, tokenizers and VAE come from ``config`` (else the matching BFL hub repo)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from render_service.engine.detect import single_file_type

    base = config or SINGLE_FILE_CONFIGS.get(single_file_type(path), SINGLE_FILE_CONFIGS["flux-dev"])
    try:
        transformer = FluxTransformer2DModel.from_single_file(
            str(path), config=base, subfolder="transformer", dtype=dtype
        )
        return FluxPipeline.from_pretrained(base, transformer=transformer, dtype=dtype)
    except Exception as exc:  # conversion, hub and file errors come in many classes
        raise ModelNotFoundError(
            f"could not load the single-file Flux checkpoint {path} with components from {base!r} ({_short(exc)}). "
            f"{HOW_TO_PROVIDE}"
        ) from None
