"""Denoising time of stock diffusers SDXL versus our regional engine, same weights, same steps and size.

CPU (default): the tiny SDXL-architecture model (built offline), 256x256, 25 steps, fp32.
CUDA (``--full``): a full-size SDXL with random weights built on the GPU (no download), 1024x1024,
25 steps, fp16, with peak GPU memory per run.

For 1, 5 and 12 regions it prints the denoising seconds of stock ``StableDiffusionXLPipeline`` (77
text tokens, precomputed embeddings) and of ours (Omost conditioning: every region's bags, regional
masks, batched CFG, text K/V made once per job), the ratio, our end-to-end ``render`` time, and on
CUDA the peak memory of each whole run -- both decode to images, so the peaks compare like with
like. ``--compile`` adds the same table with both UNets under ``torch.compile`` (and each side's
compile time), and checks that our compiled images equal our eager ones. Runs are interleaved and
the minimum of ``--repeats`` is kept, which is what matters on a shared machine. ``--json`` writes
every figure.

    python bench/render_bench.py                      # CPU, tiny model
    python bench/render_bench.py --full --compile     # CUDA, full-size SDXL, random weights
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from diffusers import StableDiffusionXLPipeline  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402

from render_service.engine import RenderEngine  # noqa: E402
from render_service.engine.backends import ATTENTION_BACKENDS, AttentionConfigError  # noqa: E402
from render_service.engine.loading import resolve_dtype  # noqa: E402
from render_service.engine.schedulers import make_scheduler  # noqa: E402
from render_service.engine.tiny import FULL, MID, TINY, build_random_pipeline, build_tiny_model  # noqa: E402
from shared.canvas import Canvas  # noqa: E402
from shared.contract import AREAS, LOCATIONS  # noqa: E402
from shared.jobs import RenderRequest  # noqa: E402
from shared.layout import layout_canvas  # noqa: E402

SHAPES = {"tiny": TINY, "mid": MID, "full": FULL}
NEGATIVE = "lowres, bad anatomy, bad hands, cropped, worst quality"
SUBJECTS = ["dragon", "knight", "castle", "tree", "river", "moon", "wolf", "lantern", "ship", "tower", "cat", "bird"]


def canvas_with(regions: int) -> Canvas:
    """A canvas shaped like real Omost output: 5 details a region, tags, atmosphere, style, quality."""
    locations, areas = list(LOCATIONS), list(AREAS)
    local = []
    for i in range(regions):
        subject = SUBJECTS[i % len(SUBJECTS)]
        local.append(
            {
                "location": locations[i % len(locations)],
                "offset": "no offset",
                "area": areas[(3 * i) % len(areas)],
                "distance_to_viewer": float(regions - i),
                "description": f"A detailed {subject} seen in the evening light, part of the larger scene.",
                "detailed_descriptions": [
                    f"The {subject} has intricate textures that catch the warm orange light of the sunset.",
                    f"Soft shadows fall across the {subject}, giving it depth and a strong sense of volume.",
                    f"Small details on the {subject} reward a closer look, from worn edges to tiny highlights.",
                    f"The colours of the {subject} echo the palette of the sky, tying it into the composition.",
                    f"The {subject} is placed with care so that the eye travels naturally across the image.",
                ],
                "tags": f"{subject}, evening, warm light, detailed, fantasy, painterly",
                "atmosphere": "Calm, warm and slightly mysterious.",
                "style": "Detailed digital painting with soft brushwork.",
                "quality_meta": "High quality, sharp focus, rich detail.",
                "HTML_web_color_name": "darkorange",
            }
        )
    return Canvas.model_validate(
        {
            "global_description": {
                "description": "A fantasy landscape at dusk with many characters and objects.",
                "detailed_descriptions": [
                    "The sky fades from orange near the horizon to deep purple above.",
                    "Mist lies in the valleys and the first stars appear.",
                ],
                "tags": "fantasy, landscape, dusk, painterly, detailed, cinematic",
                "HTML_web_color_name": "darkslateblue",
            },
            "local_descriptions": local,
        }
    )


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None


class StepClock:
    """Denoising time from per-step timestamps, measured the same way for stock and ours.

    The span from the end of step 1 to the end of the last step, scaled by steps / (steps - 1):
    it leaves out text encoding, latent set-up and decoding on both sides. On CPU the clock is
    this thread's CPU time with one torch thread, so other processes on a shared machine do not
    inflate it; on CUDA it is wall time after a synchronize.
    """

    def __init__(self, device: str, cpu_clock: bool) -> None:
        self.device = device
        self.clock = time.thread_time if cpu_clock else time.perf_counter
        self.marks: list[float] = []

    def mark(self) -> None:
        synchronize(self.device)
        self.marks.append(self.clock())

    def seconds(self) -> float:
        steps = len(self.marks)
        if steps < 2:
            raise ValueError("need at least 2 steps to time")
        return (self.marks[-1] - self.marks[0]) * steps / (steps - 1)


class Stock:
    """diffusers' own SDXL pipeline on the engine's modules, with stock attention processors.

    It decodes to images like the product does (peaks compare like with like) with diffusers' own
    untiled decode, as a user of the stock pipeline gets it.
    """

    def __init__(self, engine: RenderEngine, prompt: str) -> None:
        components = dict(engine.pipeline.components)
        components["scheduler"] = make_scheduler("dpmpp_2m_karras", engine.pipeline.scheduler.config)
        self.pipe = StableDiffusionXLPipeline(**components)
        self.pipe.set_progress_bar_config(disable=True)
        self.engine = engine
        self.unet = engine.unet
        with torch.inference_mode():
            embeds = self.pipe.encode_prompt(
                prompt, negative_prompt=NEGATIVE, device=engine.device, do_classifier_free_guidance=True
            )
        self.embeds = dict(
            zip(
                ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"],
                embeds,
                strict=True,
            )
        )

    def compile(self) -> None:
        self.pipe.unet = torch.compile(self.unet, fullgraph=True)

    def denoise(self, size: int, steps: int, clock: StepClock) -> float:
        unet = self.unet
        ours = unet.attn_processors
        unet.set_attn_processor(AttnProcessor2_0())
        vae = self.engine.vae
        tiled = vae.use_tiling
        vae.disable_tiling()

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            clock.mark()
            return kwargs

        try:
            latents = self.pipe(
                **self.embeds,
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=5.0,
                output_type="latent",
                generator=torch.Generator("cpu").manual_seed(0),
                callback_on_step_end=on_step_end,
            ).images
            # diffusers' own decode: the pipeline upcasts an fp16 VAE that needs it and decodes
            # whole images; with the engine's VAE already fp32 it would feed it fp16 latents.
            with torch.inference_mode():
                vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)
            synchronize(self.engine.device)
            return clock.seconds()
        finally:
            unet.set_attn_processor(ours)
            vae.use_tiling = tiled


def ours(
    engine: RenderEngine, canvas: Canvas, size: int, steps: int, clock: StepClock
) -> tuple[float, float, list[np.ndarray]]:
    """(denoise seconds by the step clock, end-to-end seconds of ``render``, the images)."""
    request = RenderRequest(
        canvas=canvas, width=size, height=size, steps=steps, seed=0, guidance_scale=5.0, negative_prompt=NEGATIVE
    )
    result = engine.render(request, on_step=lambda done, total: clock.mark())
    return clock.seconds(), result.timings["total"], [np.asarray(image) for image in result.images]


def positive_tokens(engine: RenderEngine, canvas: Canvas) -> int:
    layout = layout_canvas(canvas)
    bags = sum(max(1, len(engine.text.pack(c.prefixes, c.suffixes).bags)) for c in layout.conditions)
    return 77 * bags


def load_engine(args: argparse.Namespace) -> RenderEngine:
    if args.shape:
        # A random-weight pipeline built in this process: the --full path (no download, no disk).
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = resolve_dtype(args.dtype, device)
        print(f"building a random-weight {args.shape} SDXL on {device} ...", flush=True)
        pipeline = build_random_pipeline(SHAPES[args.shape], device=device)
        if args.fp16_vae:
            # Stands in for an fp16-safe VAE (madebyollin/sdxl-vae-fp16-fix, OMOST_RENDER_VAE): same
            # architecture, so the same time and memory; random weights make no claim about NaNs.
            pipeline.vae.register_to_config(force_upcast=False)
        return RenderEngine.from_pipeline(pipeline, model_name=f"random-sdxl-{args.shape}", device=device, dtype=dtype)
    model = args.model or str(build_tiny_model(REPO / "out" / "tiny-sdxl"))
    return RenderEngine.load(model, device=args.device, dtype=args.dtype)


def run_table(
    engine: RenderEngine, stock: Stock, args: argparse.Namespace, size: int, label: str, clock: Any
) -> dict[int, dict[str, Any]]:
    """One table: per region count, the min over repeats of stock and ours, interleaved."""
    cuda = torch.device(engine.device).type == "cuda"
    header = f"{label:<9}{'regions':>7} {'tokens':>6} {'stock s':>8} {'ours s':>8} {'ratio':>6} {'e2e s':>7}"
    if cuda:
        header += f" {'peak GiB stock/ours':>20}"
    print(header, flush=True)
    table: dict[int, dict[str, Any]] = {}
    for count in [int(n) for n in args.regions.split(",")]:
        canvas = canvas_with(count)
        times: dict[str, list[float]] = {"stock": [], "ours": [], "e2e": []}
        peaks: dict[str, float | None] = {}
        images: list[np.ndarray] = []
        for _ in range(args.repeats):
            reset_peak(engine.device)
            times["stock"].append(stock.denoise(size, args.steps, clock()))
            peaks["stock"] = peak_gib(engine.device)
            reset_peak(engine.device)
            denoise, total, images = ours(engine, canvas, size, args.steps, clock())
            times["ours"].append(denoise)
            times["e2e"].append(total)
            peaks["ours"] = peak_gib(engine.device)
        best = {name: min(values) for name, values in times.items()}
        row = {
            "tokens": positive_tokens(engine, canvas) + 77,
            **best,
            "ratio": best["ours"] / best["stock"],
            "peak_gib": peaks,
            "images": images,
        }
        table[count] = row
        line = (
            f"{'':<9}{count:>7} {row['tokens']:>6} {best['stock']:>8.3f} {best['ours']:>8.3f} {row['ratio']:>6.2f} "
            f"{best['e2e']:>7.3f}"
        )
        if cuda:
            line += f" {peaks['stock']:>9.2f} / {peaks['ours']:<8.2f}"
        print(line, flush=True)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--full", action="store_true", help="CUDA, full-size random SDXL, 1024x1024, fp16 (--shape full --device cuda)"
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), help="build a random-weight SDXL of this shape in-process")
    parser.add_argument("--model", help="diffusers folder / hub id / .safetensors (default: the tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", type=int, help="square side in pixels (default 256, or 1024 with --full)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--regions", default="1,5,12")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs; default 1)")
    parser.add_argument("--compile", action="store_true", help="also time both UNets under torch.compile")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--fp16-vae", action="store_true", help="treat the random VAE as fp16-safe (no upcast)")
    parser.add_argument(
        "--attention", choices=ATTENTION_BACKENDS, default="sdpa",
        help="our regional attention backend (set_attention; one that runs eager: flex is timed by gpu_quick.py)",
    )
    args = parser.parse_args(argv)
    if args.full:
        if not torch.cuda.is_available():
            sys.exit("--full needs a CUDA GPU")
        args.shape, args.device = "full", "cuda"
        args.dtype = "fp16" if args.dtype == "auto" else args.dtype
    size = args.size or (1024 if args.full else 256)
    if torch.device(args.device if args.device != "auto" else "cpu").type == "cpu":
        torch.set_num_threads(args.threads)

    engine = load_engine(args)
    try:
        engine.set_attention(args.attention)
    except AttentionConfigError as exc:
        parser.error(str(exc))
    device = engine.device
    cpu_clock = torch.device(device).type == "cpu" and torch.get_num_threads() == 1

    def clock() -> StepClock:
        return StepClock(device, cpu_clock)

    machine = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else platform.processor() or "cpu"
    print(
        f"device {device} ({machine}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"dtype {engine.dtype}, {size}x{size}, {args.steps} steps, CFG 5, DPM++ 2M Karras, min of {args.repeats}, "
        f"clock: {'thread CPU time' if cpu_clock else 'wall'}, ours decodes tiled: {engine.tiled_decode}, "
        f"attention: {engine.attention}",
        flush=True,
    )
    report: dict[str, Any] = {"device": device, "machine": machine, "torch": torch.__version__, "size": size,
                              "steps": args.steps, "dtype": str(engine.dtype),
                              "attention": engine.attention}  # fmt: skip

    def save() -> None:
        if args.json:
            clean = {k: v for k, v in report.items() if k != "tables"}
            clean["tables"] = {
                name: {n: {k: v for k, v in row.items() if k != "images"} for n, row in table.items()}
                for name, table in report.get("tables", {}).items()
            }
            args.json.write_text(json.dumps(clean, indent=2))

    stock = Stock(engine, canvas_with(1).global_description.description)
    # Warm-up: first calls pay for allocator growth, kernel selection and lazy imports.
    stock.denoise(size, 2, clock())
    ours(engine, canvas_with(1), size, 2, clock())
    report["tables"] = {"eager": run_table(engine, stock, args, size, "eager", clock)}
    save()
    if args.compile:
        for name, compile_side, warm in (
            ("stock", stock.compile, lambda: stock.denoise(size, 2, clock())),
            ("ours", engine.compile_unet, lambda: ours(engine, canvas_with(1), size, 2, clock())),
        ):
            compile_side()
            started = time.perf_counter()
            warm()
            report[f"compile_s_{name}"] = time.perf_counter() - started
            print(f"compiled {name} in {report[f'compile_s_{name}']:.1f} s (first call)", flush=True)
        compiled = run_table(engine, stock, args, size, "compiled", clock)
        report["tables"]["compiled"] = compiled
        differences = {}
        for count, row in compiled.items():
            eager_images = report["tables"]["eager"][count]["images"]
            gaps = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(eager_images, row["images"], strict=True)]
            differences[count] = {"max": int(max(g.max() for g in gaps)), "mean": float(np.mean(gaps))}
        report["compiled_vs_eager_grey_levels"] = differences
        report["dynamo_unique_graphs"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        print(f"dynamo graphs compiled (stock + ours, all canvases): {report['dynamo_unique_graphs']}", flush=True)
        print(f"ours compiled vs eager, |difference| in grey levels per region count: {differences}", flush=True)
        save()


if __name__ == "__main__":
    main()
