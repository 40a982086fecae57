"""The offline tiny model: a real diffusers folder with a real CLIP vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

from render_service.engine.tiny import build_tiny_model


def test_tiny_model_is_a_diffusers_sdxl_folder(tiny_model: Path) -> None:
    index = json.loads((tiny_model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (tiny_model / part).is_dir(), part
    size = sum(f.stat().st_size for f in tiny_model.rglob("*") if f.is_file())
    assert size < 40e6
    vae = json.loads((tiny_model / "vae" / "config.json").read_text())
    assert len(vae["block_out_channels"]) == 4, "latent = image / 8, as in real SDXL"


def test_build_is_idempotent(tiny_model: Path) -> None:
    weights = tiny_model / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_model(tiny_model) == tiny_model
    assert weights.stat().st_mtime_ns == before
