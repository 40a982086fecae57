"""A tiny Flux.1-architecture pipeline with random weights, built entirely offline.

The Flux twin of :mod:`render_service.engine.tiny`: a diffusers folder that
``FluxPipeline.from_pretrained`` loads like a real Flux checkpoint and that renders a 64x64
image on a CPU in well under a second. Its parts are Flux's own classes at small widths:
``FluxTransformer2DModel`` (two double-stream and two single-stream blocks), a CLIP-L-shaped
``CLIPTextModel`` (its pooled output is Flux's pooled vector), a ``T5EncoderModel``, the
16-channel VAE with Flux's scaling and shift, and ``FlowMatchEulerDiscreteScheduler`` with the
pipeline's resolution-dependent shift.

Tokenizers: CLIP's is the real one (:func:`~.tiny.write_clip_tokenizer`). T5's SentencePiece
model is not shipped by any package here, so the T5 tokenizer is transformers' own unigram
``T5Tokenizer`` (in transformers 5, backed by ``tokenizers``) given a vocabulary made from CLIP's
words (:func:`t5_vocabulary`): real words, so token counts behave like text, and T5's
``<pad>``/``</s>``/``<unk>`` at ids 0-2.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from render_service.engine.tiny import (
    CLIP_MAX_LENGTH,
    CLIP_VOCAB_SIZE,
    EOS_TOKEN,
    clip_vocabulary,
    write_clip_tokenizer,
)

__all__ = ["T5_MAX_LENGTH", "build_tiny_flux", "build_tiny_flux_pipeline", "write_t5_tokenizer"]

T5_SPECIAL = ("<pad>", "</s>", "<unk>")
T5_MAX_LENGTH = 512
"""As FluxPipeline's default ``max_sequence_length`` for [dev]."""

TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels packed 2x2, as in Flux.1
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=32,  # the T5 width
    pooled_projection_dim=32,  # the CLIP width
    guidance_embeds=True,  # [dev]-style: the guidance scale is embedded
    axes_dims_rope=(2, 2, 4),  # sums to attention_head_dim
)

VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    # Four levels so the latent is image/8 as in real Flux.
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=32,
    sample_size=128,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=0.3611,
    shift_factor=0.1159,
)

SCHEDULER = dict(
    # black-forest-labs/FLUX.1-dev's scheduler config.
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def t5_vocabulary() -> list[tuple[str, float]]:
    """A SentencePiece-style unigram vocabulary: T5's three special tokens first (ids 0-2, as in T5),
    the whole words of CLIP's BPE table as ``▁word`` pieces, then single characters as fallback.

    Scores are log-probabilities: a whole word always beats spelling it out, as in a trained model.
    """
    vocab, _ = clip_vocabulary()
    words = sorted({s[: -len("</w>")] for s in vocab if s.endswith("</w>") and s[:-4].isascii() and s[:-4].isalnum()})
    pieces: list[tuple[str, float]] = [(token, 0.0) for token in T5_SPECIAL]
    pieces.append(("▁", -8.0))
    pieces += [("▁" + word, -5.0) for word in words]
    pieces += [(chr(c), -10.0) for c in range(ord("!"), ord("~") + 1)]
    pieces += [("▁" + chr(c), -9.0) for c in range(ord("!"), ord("~") + 1) if not chr(c).isalnum()]
    return pieces


def write_t5_tokenizer(folder: Path) -> None:
    """Save a ``T5Tokenizer`` (transformers 5: backed by ``tokenizers``) with :func:`t5_vocabulary` in ``folder``."""
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer(vocab=t5_vocabulary(), extra_ids=0, model_max_length=T5_MAX_LENGTH)
    tokenizer.save_pretrained(str(folder))


def build_tiny_flux_pipeline(*, seed: int = 0, tokenizer_dir: Path | None = None, schnell: bool = False) -> Any:
    """A ``FluxPipeline`` of the tiny shape with random fp32 weights on the CPU; ``schnell``: without the
    guidance embedding, as Flux.1 [schnell]."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        root = tokenizer_dir or Path(scratch)
        if not (root / "tokenizer_2").is_dir():
            write_clip_tokenizer(root / "tokenizer", pad_token=EOS_TOKEN)
            write_t5_tokenizer(root / "tokenizer_2")
        tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
        tokenizer_2 = T5Tokenizer.from_pretrained(str(root / "tokenizer_2"))

    # A private RNG stream: building the model must not disturb the caller's global seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**{**TRANSFORMER, "guidance_embeds": not schnell})
        vae = AutoencoderKL(**VAE)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=CLIP_VOCAB_SIZE,
                max_position_embeddings=CLIP_MAX_LENGTH,
                bos_token_id=49406,
                eos_token_id=49407,  # CLIP pools at the first <|endoftext|>, as the real model does
                pad_token_id=1,
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                hidden_act="quick_gelu",
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                feed_forward_proj="gated-gelu",  # T5 v1.1, as Flux's T5-XXL
                pad_token_id=tokenizer_2.pad_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
            )
        )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def build_tiny_flux(out_dir: Path, *, schnell: bool = False) -> Path:
    """Build the tiny Flux and save it as a diffusers folder in ``out_dir``; return that folder.

    Idempotent, and never leaves a folder that looks complete but is not: the pipeline is saved
    next to ``out_dir`` and renamed in (``model_index.json`` marks a complete folder).
    """
    out_dir = Path(out_dir)
    if (out_dir / "model_index.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-flux-", dir=out_dir.parent))
    try:
        build_tiny_flux_pipeline(schnell=schnell).save_pretrained(str(staging))
        if out_dir.exists() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        try:
            staging.rename(out_dir)
        except OSError:
            # Another process finished first (a shared cache): its folder is as good as ours.
            if not (out_dir / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
