"""Finding and loading an SDXL checkpoint: hub id, local diffusers folder or single .safetensors file.

A missing model is the most common deployment mistake, so it is answered with one
:class:`ModelNotFoundError` that says where we looked and how to provide the model, never with
a stack trace from deep inside huggingface_hub.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from render_service.engine.types import ModelNotFoundError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}/[\w.\-]{1,96}$")
DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}

HOW_TO_PROVIDE = (
    "Provide the model as one of: a Hugging Face hub id such as 'stabilityai/stable-diffusion-xl-base-1.0' "
    "(downloaded on first use; pre-fetch it with `hf download <id>` on machines without internet and set "
    "HF_HUB_OFFLINE=1), a local diffusers folder (one with model_index.json, as written by "
    "`pipeline.save_pretrained`), or a single SDXL .safetensors checkpoint file."
)


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks cuda, then mps, then cpu; anything else is taken as a torch device string."""
    if device != "auto":
        torch.device(device)  # validate early: a typo should fail here, not mid-render
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` is fp16 on accelerators (SDXL's native precision) and fp32 on CPU (fast and exact)."""
    if dtype == "auto":
        return torch.float32 if torch.device(device).type == "cpu" else torch.float16
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(sorted(DTYPES))}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.path.expanduser("~/.cache/huggingface/hub")


@contextmanager
def _quiet_dtype_rename() -> Iterator[None]:
    # diffusers 0.42 renamed ``torch_dtype`` to ``dtype`` but older releases we support only know
    # the old name; keep using it without the FutureWarning in every worker's log.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        yield


TINY_MODEL = "tiny"
"""The model name that means "the random-weight tiny SDXL, built here on first use" (smoke runs)."""


def omost_cache_dir() -> Path:
    """Where the tiny model is kept: ``$OMOST_CACHE_DIR``, else ``$XDG_CACHE_HOME/omost`` (as the CLI's)."""
    if root := os.environ.get("OMOST_CACHE_DIR"):
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "omost"


def tiny_model_dir() -> Path:
    """Build (once, offline) and return the tiny model's diffusers folder, without progress bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from render_service.engine.tiny import build_tiny_model

    # save_pretrained's "Writing model shards" bars are noise in a worker's log.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    folder = omost_cache_dir() / "tiny-sdxl"
    try:
        return build_tiny_model(folder)
    except (OSError, ImportError) as exc:
        raise ModelNotFoundError(f"model 'tiny' could not be built in {folder} ({_short(exc)})") from None


def load_pipeline(model: str, torch_dtype: torch.dtype, *, config: str | None = None) -> Any:
    """A ``StableDiffusionXLPipeline`` on the CPU from whichever form ``model`` takes."""
    from diffusers import StableDiffusionXLPipeline

    path = tiny_model_dir() if model == TINY_MODEL else Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a folder but not a diffusers pipeline (no model_index.json in it). {HOW_TO_PROVIDE}"
            )
        try:
            with _quiet_dtype_rename():
                return StableDiffusionXLPipeline.from_pretrained(str(path), torch_dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"the diffusers folder {path} is incomplete or not an SDXL pipeline ({_short(exc)}). {HOW_TO_PROVIDE}"
            ) from None
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelNotFoundError(f"{path} is a file but not a .safetensors/.ckpt checkpoint. {HOW_TO_PROVIDE}")
        try:
            # ``config`` (a hub id or a diffusers folder) supplies the component configs; without it
            # diffusers fetches SDXL base's configs from the hub once.
            with _quiet_dtype_rename():
                return StableDiffusionXLPipeline.from_single_file(str(path), torch_dtype=torch_dtype, config=config)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"could not load the single-file checkpoint {path} ({_short(exc)}). Single files need SDXL's "
                "component configs: pass config= a local diffusers SDXL folder or hub id (cached), or allow one "
                f"download of them. {HOW_TO_PROVIDE}"
            ) from None
    looks_like_path = model.startswith(("/", ".", "~")) or path.suffix.lower() in SINGLE_FILE_SUFFIXES
    if looks_like_path or not HUB_ID.match(model):
        raise ModelNotFoundError(
            f"model {model!r} not found: there is no file or folder at {path.resolve()}"
            + ("" if looks_like_path else " and it is not a hub id of the form 'owner/name'")
            + f". {HOW_TO_PROVIDE}"
        )
    try:
        with _quiet_dtype_rename():
            return StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=torch_dtype)
    except Exception as exc:  # hub errors come in many classes (network, auth, missing files)
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise ModelNotFoundError(
            f"model {model!r} not found: no local file or folder at {path.resolve()}, and the hub id could not "
            f"be loaded from the Hugging Face hub or its cache at {_hub_cache()}"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''} ({_short(exc)}). {HOW_TO_PROVIDE}"
        ) from None


def load_vae(vae: str, torch_dtype: torch.dtype) -> Any:
    """An ``AutoencoderKL`` from a hub id or diffusers folder, to replace a checkpoint's VAE.

    A folder may hold the VAE itself (``config.json``) or a whole pipeline (its ``vae/`` is used).
    """
    from diffusers import AutoencoderKL

    path = Path(vae).expanduser()
    source, subfolder = str(vae), None
    if path.is_dir():
        source = str(path)
        subfolder = "vae" if not (path / "config.json").is_file() and (path / "vae").is_dir() else None
    elif not HUB_ID.match(vae):
        raise ModelNotFoundError(f"VAE {vae!r} not found: no folder at {path.resolve()} and not a hub id 'owner/name'")
    try:
        with _quiet_dtype_rename():
            return AutoencoderKL.from_pretrained(source, subfolder=subfolder, torch_dtype=torch_dtype)
    except Exception as exc:  # hub and file errors come in many classes
        raise ModelNotFoundError(f"VAE {vae!r} could not be loaded ({_short(exc)})") from None
