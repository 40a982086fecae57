"""The offline tiny Flux: a real diffusers folder that stock ``FluxPipeline`` loads and renders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


def test_tiny_flux_is_a_diffusers_flux_folder(tiny_flux: Path) -> None:
    index = json.loads((tiny_flux / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["tokenizer_2"][1] in ("T5Tokenizer", "T5TokenizerFast")  # one class in transformers 5
    vae = json.loads((tiny_flux / "vae" / "config.json").read_text())
    assert vae["latent_channels"] == 16 and len(vae["block_out_channels"]) == 4
    size = sum(f.stat().st_size for f in tiny_flux.rglob("*") if f.is_file())
    assert size < 40e6


def test_t5_tokenizer_is_t5_shaped(tiny_flux: Path) -> None:
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer.from_pretrained(str(tiny_flux / "tokenizer_2"))
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a red cat sits").input_ids
    assert len(ids) == 5 and ids[-1] == tokenizer.eos_token_id, "one piece a word, then </s>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red cat sits"


def test_stock_flux_pipeline_renders_it(tiny_flux: Path) -> None:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(tiny_flux))
    image = pipe(
        "a red cat",
        height=64,
        width=64,
        num_inference_steps=2,
        max_sequence_length=32,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0


def test_flux_family_loads_the_folder_and_refuses_what_is_not_one(tiny_flux: Path, tmp_path: Path) -> None:
    from diffusers import FluxPipeline

    from render_service.engine import ModelNotFoundError
    from render_service.engine.families import model_family

    family = model_family("flux")
    assert family.attention_layout == "joint"
    assert isinstance(family.load_pipeline(str(tiny_flux), torch.float32, None), FluxPipeline)
    with pytest.raises(ModelNotFoundError, match="not a diffusers Flux folder"):
        family.load_pipeline(str(tmp_path), torch.float32, None)


def test_render_engine_refuses_flux_before_loading_it(tiny_flux: Path) -> None:
    """The SDXL engine has no joint-attention backend: picking the Flux family fails clearly, at once."""
    from render_service.engine import RenderEngine
    from render_service.engine.backends import AttentionConfigError

    with pytest.raises(AttentionConfigError, match="joint"):
        RenderEngine.load(str(tiny_flux), device="cpu", family="flux")


def test_tiny_flux_by_name_lives_in_the_omost_cache(tiny_flux: Path, tmp_path: Path, monkeypatch) -> None:
    from diffusers import FluxPipeline

    from render_service.engine.families import model_family

    monkeypatch.setenv("OMOST_CACHE_DIR", str(tmp_path))
    (tmp_path / "tiny-flux").symlink_to(tiny_flux)  # already built: the name must reuse it, not rebuild
    pipe = model_family("flux").load_pipeline("tiny-flux", torch.float32, None)
    assert isinstance(pipe, FluxPipeline)
    assert Path(pipe.transformer.config._name_or_path).resolve() == (tiny_flux / "transformer").resolve()
