"""A tiny SDXL-architecture pipeline with random weights, built entirely offline.

Tests and CPU smoke runs need a model that loads through exactly the same code as a real SDXL
checkpoint (a diffusers folder), renders in about a second, and tokenizes like real CLIP, so that
token counts, bag packing and padding are the real thing. The weights are random; the vocabulary
is not: it is CLIP's own BPE table, which ships inside the ``open-clip-torch`` wheel.

``open_clip`` itself is never imported (it needs torchvision, which does not work beside the CPU
torch); only its data file is read.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CLIP_MAX_LENGTH = 77


def _bpe_path() -> Path:
    """Where the installed open-clip-torch keeps CLIP's BPE merges, found without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / BPE_FILE
            if candidate.is_file():
                return candidate
    try:
        for file in importlib.metadata.files("open_clip_torch") or []:
            if file.name == BPE_FILE:
                return Path(str(file.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    raise FileNotFoundError(
        f"CLIP's BPE table ({BPE_FILE}) was not found. It ships in the open-clip-torch wheel: "
        "`pip install --no-deps open-clip-torch` (no-deps: its torchvision requirement clashes with CPU torch)."
    )


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible byte → printable-character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


@lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merges, rebuilt exactly as ``clip/simple_tokenizer.py`` does."""
    with gzip.open(_bpe_path()) as packed:
        lines = packed.read().decode("utf-8").split("\n")
    # The first line is a version header; CLIP uses the next 49152 - 256 - 2 merges.
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols]
    symbols += ["".join(m.split()) for m in merges]
    symbols += [BOS_TOKEN, EOS_TOKEN]
    assert len(symbols) == CLIP_VOCAB_SIZE, len(symbols)
    return {s: i for i, s in enumerate(symbols)}, merges


def write_clip_tokenizer(folder: Path, pad_token: str) -> None:
    """Save a real-vocabulary ``CLIPTokenizer`` in ``folder``.

    SDXL's two tokenizers differ only in their pad token (``<|endoftext|>`` for the first, ``!`` for
    the second), and Omost pads each bag with its own tokenizer's pad id, so both are reproduced.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary()
    tokenizer = CLIPTokenizer(
        vocab=dict(vocab),
        merges=[tuple(m.split()) for m in merges],  # type: ignore[misc]  # pairs at runtime; the hint says str
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=pad_token,
        # Without it the tokenizer reports an "infinite" length and SDXL's padding breaks.
        model_max_length=CLIP_MAX_LENGTH,
    )
    tokenizer.save_pretrained(str(folder))


@dataclass(frozen=True)
class SdxlShape:
    """The architecture knobs that differ between the tiny model and real SDXL."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]


TINY = SdxlShape(
    unet=dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        addition_time_embed_dim=8,
        # 6 size/crop numbers x 8 + the 32-wide pooled text embedding of encoder 2.
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,  # both encoders' widths (32 + 32), as 768 + 1280 = 2048 in SDXL
        norm_num_groups=1,
    ),
    # Four levels so the latent is image/8 as in real SDXL; with two the latent is image/2 and the
    # same render is ~40x slower.
    vae=dict(
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=128,
    ),
    text_encoder=dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4, hidden_act="quick_gelu"
    ),
    text_encoder_2=dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=5,
        num_attention_heads=4,
        hidden_act="gelu",
        projection_dim=32,
    ),
)

FULL = SdxlShape(
    # stabilityai/stable-diffusion-xl-base-1.0, written out so the benchmark needs no download.
    unet=dict(
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        sample_size=128,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        cross_attention_dim=2048,
        norm_num_groups=32,
    ),
    vae=dict(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    ),
    text_encoder=dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu"
    ),
    text_encoder_2=dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        hidden_act="gelu",
        projection_dim=1280,
    ),
)

MID = SdxlShape(
    # Real SDXL widths where the cost of regional conditioning lives (text encoders of 768 and 1280,
    # 2048-wide cross-attention, 320/640-channel UNet levels) but few layers, so that a CPU can
    # show how text tokens trade against UNet work at realistic proportions.
    unet=dict(
        block_out_channels=(320, 640),
        layers_per_block=2,
        sample_size=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10),
        transformer_layers_per_block=(1, 2),
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        cross_attention_dim=2048,
        norm_num_groups=32,
    ),
    vae=TINY.vae,
    text_encoder=dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12, hidden_act="quick_gelu"
    ),
    text_encoder_2=dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=2,
        num_attention_heads=20,
        hidden_act="gelu",
        projection_dim=1280,
    ),
)

SDXL_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)


def build_random_pipeline(
    shape: SdxlShape = TINY, *, seed: int = 0, tokenizer_dir: Path | None = None, device: str = "cpu"
) -> Any:
    """A ``StableDiffusionXLPipeline`` of the given shape with random fp32 weights made on ``device``.

    Building the full-size shape straight on a GPU takes seconds; on a CPU it takes minutes.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    clip_common: dict[str, Any] = dict(
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=49406,
        # The real eos id makes CLIP pool at the first <|endoftext|>, as the real models do.
        eos_token_id=49407,
        pad_token_id=1,
    )
    # A private RNG stream: building the model must not disturb the caller's global seed.
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            in_channels=4, out_channels=4, use_linear_projection=True, addition_embed_type="text_time", **shape.unet
        )
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **shape.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**clip_common, **shape.text_encoder))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_common, **shape.text_encoder_2))

    with tempfile.TemporaryDirectory() as scratch:
        root = tokenizer_dir or Path(scratch)
        if not (root / "tokenizer").is_dir():
            write_clip_tokenizer(root / "tokenizer", pad_token=EOS_TOKEN)
            write_clip_tokenizer(root / "tokenizer_2", pad_token="!")
        tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(root / "tokenizer_2"))

    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )


def build_tiny_model(out_dir: Path) -> Path:
    """Build the tiny model and save it as a diffusers folder in ``out_dir``; return that folder.

    Idempotent: a folder that already holds a saved pipeline is returned as it is. The folder is
    written next to its final place and renamed in, so an interrupted build never looks complete.
    """
    out_dir = Path(out_dir)
    if (out_dir / "model_index.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-sdxl-", dir=out_dir.parent))
    try:
        build_random_pipeline(TINY).save_pretrained(str(staging))
        if out_dir.exists():
            # An empty (or partial) folder, e.g. a pytest tmp dir: fill it in place.
            # model_index.json goes last: it is what marks the folder as a complete pipeline.
            for item in sorted(staging.iterdir(), key=lambda i: i.name == "model_index.json"):
                target = out_dir / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                item.rename(target)
        else:
            staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
