"""Denoising time of stock diffusers ``FluxPipeline`` versus our regional Flux engine, same weights.

CPU (default): the tiny Flux (built in-process, random weights), 256x256, fp32, one torch thread,
thread CPU time. CUDA (``--shape full``): a full-size random-weight Flux.1 transformer (19 double +
38 single blocks, 3072 wide) with Flux's VAE, bf16, 1024x1024, built on the GPU (no download; the
text encoders keep their real widths but only two layers each: text encoding is not timed), with
peak GPU memory per run. ``--variant dev`` (guidance embedded, 28 steps) or ``schnell`` (4 steps).

For 1, 5 and 12 conditions (the global one plus regions) it prints the denoising seconds of stock
``FluxPipeline`` on the global prompt's embeddings and of ours (every region's T5 tokens, the joint
mask in the first 40 % of the steps, the base-ratio blend), the ratio, ours end to end (text
encoding and decode included), the text tokens and peak memory. Both sides call the same
``FluxPipeline.__call__`` on precomputed embeddings and are timed by the same per-step clock.
``--compile`` adds the table with the transformer under ``torch.compile`` (``--backend eager``
runs that code path on a CPU in seconds). ``--attention`` names the joint-attention backend of
ours (default Flux's, ``packed``; ``sdpa`` is the dense mask). Runs are interleaved, the minimum of
``--repeats`` kept.

    python bench/flux_bench.py                                    # CPU, tiny Flux
    python bench/flux_bench.py --shape full --variant dev --compile   # CUDA, full-size Flux.1 [dev]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from render_service.engine.backends import joint_backend  # noqa: E402
from render_service.engine.flux_engine import VARIANT_DEFAULTS, FluxEngine, regional_options  # noqa: E402
from render_service.engine.flux_regional import FluxRegionalInputs, encode_layout, token_coverage  # noqa: E402
from render_service.engine.tiny_flux import build_tiny_flux_pipeline  # noqa: E402
from shared.jobs import RenderRequest  # noqa: E402
from shared.layout import layout_canvas  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from render_bench import StepClock, canvas_with, peak_gib, reset_peak, synchronize  # noqa: E402

FULL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
    norm_num_groups=32, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
    scaling_factor=0.3611, shift_factor=0.1159,
)  # fmt: skip


def build_full_flux(device: str, dtype: torch.dtype, *, schnell: bool) -> Any:
    """A full-size Flux.1 pipeline with random weights made on ``device`` (the text encoders shallow)."""
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tiny = build_tiny_flux_pipeline(schnell=schnell)  # its tokenizers and scheduler
    with torch.device(device):
        transformer = FluxTransformer2DModel(guidance_embeds=not schnell).to(dtype)  # diffusers' defaults: Flux.1
        vae = AutoencoderKL(**FULL_VAE).to(dtype)
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=tiny.tokenizer.vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=2,
            num_attention_heads=12, max_position_embeddings=77, eos_token_id=49407,
        )).to(dtype)  # fmt: skip
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(tiny.tokenizer_2), d_model=4096, d_kv=64, d_ff=10240, num_layers=2, num_heads=64,
            feed_forward_proj="gated-gelu",
        )).to(dtype)  # fmt: skip
    return FluxPipeline(
        scheduler=tiny.scheduler, vae=vae, text_encoder=clip, tokenizer=tiny.tokenizer, text_encoder_2=t5,
        tokenizer_2=tiny.tokenizer_2, transformer=transformer,
    )  # fmt: skip


def denoise(pipe: Any, embeds: torch.Tensor, pooled: torch.Tensor, args: argparse.Namespace, clock: StepClock,
            regional: FluxRegionalInputs | None) -> float:  # fmt: skip
    """One denoising run of ``pipe`` on precomputed embeddings; seconds by the per-step clock."""

    def on_step_end(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if regional is not None:
            regional.on_step_end(p, step, timestep, kwargs)
        clock.mark()
        return {}

    if regional is not None:
        regional.step = 0
    pipe(
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=args.size, width=args.size,
        num_inference_steps=args.steps, guidance_scale=args.guidance, generator=torch.Generator().manual_seed(1),
        joint_attention_kwargs={"regional": regional} if regional is not None else None,
        callback_on_step_end=on_step_end, output_type="latent",
    )  # fmt: skip
    return clock.seconds()


def run_table(engine: FluxEngine, args: argparse.Namespace, label: str) -> list[dict[str, Any]]:
    pipe, max_len = engine.pipeline, engine.defaults["max_sequence_length"]
    cpu_clock = torch.device(args.device).type == "cpu"
    rows = []
    for conditions in [int(c) for c in args.regions.split(",")]:
        canvas = canvas_with(conditions - 1)
        layout = layout_canvas(canvas)
        with torch.inference_mode():
            embeds, pooled, token_condition = encode_layout(
                pipe, layout, max_sequence_length=max_len, region_tokens=128
            )
            stock_embeds = embeds[:, : int((token_condition == 0).sum())]
        options = regional_options(None, args.steps)
        regional = FluxRegionalInputs.build(
            token_condition, token_coverage(layout, args.size, args.size), options, joint_backend(engine.attention)
        )
        regional.prepare(args.device, 1)
        request = RenderRequest(canvas=canvas, width=args.size, height=args.size, steps=args.steps, seed=1,
                                sampler="euler", guidance_scale=args.guidance)  # fmt: skip
        best: dict[str, float] = {}
        peaks: dict[str, float | None] = {}
        for _ in range(args.repeats):
            for side in ("stock", "ours"):
                reset_peak(args.device)
                with torch.inference_mode():
                    if side == "stock":
                        seconds = denoise(pipe, stock_embeds, pooled, args, StepClock(args.device, cpu_clock), None)
                    else:
                        seconds = denoise(pipe, embeds, pooled, args, StepClock(args.device, cpu_clock), regional)
                synchronize(args.device)
                best[side] = min(best.get(side, float("inf")), seconds)
                peaks[side] = peak_gib(args.device)
            started = time.perf_counter()
            engine.render(request)
            best["e2e"] = min(best.get("e2e", float("inf")), time.perf_counter() - started)
        row = {"table": label, "attention": engine.attention, "conditions": conditions,
               "text_tokens": int(token_condition.numel()),
               "stock_s": best["stock"], "ours_s": best["ours"], "ratio": best["ours"] / best["stock"],
               "ours_e2e_s": best["e2e"], "peak_gib_stock": peaks["stock"], "peak_gib_ours": peaks["ours"]}  # fmt: skip
        rows.append(row)
        peak = "" if row["peak_gib_stock"] is None else f" | {row['peak_gib_stock']:.2f} / {row['peak_gib_ours']:.2f}"
        print(f"| {label} | {conditions} | {row['text_tokens']} | {row['stock_s']:.3f} | {row['ours_s']:.3f} | "
              f"{row['ratio']:.2f} | {row['ours_e2e_s']:.3f}{peak} |", flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--variant", choices=sorted(VARIANT_DEFAULTS), default="dev")
    parser.add_argument("--device", default=None, help="default: cpu for tiny, cuda for full")
    parser.add_argument("--size", type=int, help="square side (default 256 tiny, 1024 full)")
    parser.add_argument("--steps", type=int, help="default: the variant's (28 dev, 4 schnell)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--regions", default="1,5,12", help="conditions per canvas: the global one plus regions")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    parser.add_argument("--compile", action="store_true", help="also time with the transformer under torch.compile")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (eager: a CPU smoke run)")
    parser.add_argument("--attention", help="joint-attention backend of ours (default: Flux's, packed)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.shape == "tiny" else "cuda")
    args.size = args.size or (256 if args.shape == "tiny" else 1024)
    args.steps = args.steps or VARIANT_DEFAULTS[args.variant]["steps"]
    args.guidance = VARIANT_DEFAULTS[args.variant]["guidance_scale"]
    schnell = args.variant == "schnell"
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.shape == "tiny" else torch.bfloat16
    if args.shape == "tiny":
        with tempfile.TemporaryDirectory() as scratch:
            pipe = build_tiny_flux_pipeline(schnell=schnell, tokenizer_dir=Path(scratch))
    else:
        pipe = build_full_flux(args.device, dtype, schnell=schnell)
    pipe.to(args.device)
    engine = FluxEngine(pipe, model_name=f"random-{args.shape}-{args.variant}", device=args.device, dtype=dtype)
    if args.attention:
        engine.set_attention(args.attention)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.shape} Flux "
          f"[{args.variant}], {args.size}², {args.steps} steps, {args.device}, attention {engine.attention}, "
          f"min of {args.repeats}")  # fmt: skip
    print("| | conditions | text tokens | stock s | ours s | ours / stock | ours e2e s | peak GiB stock / ours |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = run_table(engine, args, "eager")
    if args.compile:
        started = time.perf_counter()
        engine.compile_transformer(backend=args.backend)
        with torch.inference_mode():
            engine.warm_up([(args.size, args.size)], steps=2)
        print(f"compiled in {time.perf_counter() - started:.1f} s (first call, warm-up)")
        rows += run_table(engine, args, "compiled")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
