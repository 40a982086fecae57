"""Which model family a checkpoint is, read from the checkpoint itself (no flag needed).

- the names ``tiny`` (SDXL), ``tiny-flux`` and ``tiny-flux-schnell`` (Flux);
- a diffusers folder or a hub id: the pipeline class in its ``model_index.json``;
- a single ``.safetensors`` file: its tensor names (and a shape or two), through diffusers' own
  ``infer_diffusers_model_type``, read from the file's header without loading a tensor.

What we cannot place is a :class:`ModelNotFoundError` that says what it found and what we take.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from render_service.engine.loading import HUB_ID, SINGLE_FILE_SUFFIXES, TINY_MODEL, _short
from render_service.engine.types import ModelNotFoundError

__all__ = ["TINY_FLUX_MODELS", "detect_family"]

TINY_FLUX_MODELS = ("tiny-flux", "tiny-flux-schnell")
SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
FLUX_PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline")
TAKEN = (
    "Families served: SDXL (StableDiffusionXLPipeline folders, hub ids, single files) and Flux.1 [dev]/[schnell] "
    "(FluxPipeline folders, hub ids, single transformer files)."
)


def _by_pipeline_class(name: str, where: str) -> str:
    if name in SDXL_PIPELINES:
        return "sdxl"
    if name in FLUX_PIPELINES:
        return "flux"
    if name.startswith("Flux2"):
        raise ModelNotFoundError(
            f"{where} is a {name} (Flux.2), which is not served yet (docs/render-engine.md). {TAKEN}"
        )
    raise ModelNotFoundError(f"{where} is a {name or 'pipeline of unknown class'}, which we cannot render. {TAKEN}")


class _Header(Mapping[str, Any]):
    """A safetensors file's tensor names and shapes, as ``infer_diffusers_model_type`` reads a checkpoint."""

    class _Shape:
        def __init__(self, shape: list[int]) -> None:
            self.shape = tuple(shape)

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt")
        self._keys = set(self._file.keys())  # type: ignore[no-untyped-call]

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys:
            raise KeyError(key)
        return self._Shape(self._file.get_slice(key).get_shape())  # type: ignore[no-untyped-call]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def single_file_type(path: Path) -> str:
    """diffusers' name for a single checkpoint file's model type (``xl_base``, ``flux-dev``, ...)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    if path.suffix.lower() != ".safetensors":
        return "xl_base"  # .ckpt pickles cannot be read without loading them; SDXL is what they have been
    try:
        header = _Header(path)
    except Exception as exc:  # safetensors raises its own error classes for a damaged header
        raise ModelNotFoundError(f"{path} is not a readable .safetensors file ({_short(exc)}). {TAKEN}") from None
    return str(infer_diffusers_model_type(header))


def detect_family(model: str) -> str:
    """``sdxl`` or ``flux`` for the checkpoint ``model`` names; :class:`ModelNotFoundError` if we cannot place it."""
    if model == TINY_MODEL:
        return "sdxl"
    if model in TINY_FLUX_MODELS:
        return "flux"
    path = Path(model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            return "sdxl"  # the SDXL loader says what is wrong with the folder
        try:
            name = str(json.loads(index.read_text()).get("_class_name", ""))
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"{index} is not readable JSON ({_short(exc)})") from None
        return _by_pipeline_class(name, str(path))
    if path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        kind = single_file_type(path)
        if kind.startswith("xl_"):
            return "sdxl"
        if kind in ("flux-dev", "flux-schnell"):
            return "flux"
        raise ModelNotFoundError(
            f"{path} is a single-file checkpoint of type {kind!r}, which we cannot render. {TAKEN}"
        )
    if HUB_ID.match(model):
        try:
            from diffusers import DiffusionPipeline

            config = DiffusionPipeline.load_config(model)
        except Exception:  # not cached and offline, or no such repo: the SDXL loader's error says which
            return "sdxl"
        return _by_pipeline_class(str(config.get("_class_name", "")), model)
    return "sdxl"  # not a path, not a hub id: the SDXL loader's error explains the three forms
