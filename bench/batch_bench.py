"""Images per minute of same-shaped jobs rendered one by one versus as one UNet batch (``render_batch``).

What a worker with ``OMOST_RENDER_BATCH_MAX_IMAGES`` does with the jobs waiting in its queue, measured
on the engine alone: ``--jobs`` jobs of one size and step count (different canvases of 0-5 regions,
seeds and CFG scales), rendered in batches of each ``--batches`` size; a batch size of 1 is the
worker without batching. For each it prints the wall time of all jobs, images per minute, the
speed-up over one by one, and the largest pixel difference between a job's batched image and its
image rendered alone (the same seed; batched kernels round differently). The minimum of ``--repeats``
is kept.

    python bench/batch_bench.py                       # CPU, tiny model, 128², 10 steps
    python bench/batch_bench.py --full --size 512     # CUDA, full-size SDXL with random weights, fp16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from bench.render_bench import NEGATIVE, canvas_with, load_engine  # noqa: E402
from render_service.engine import RenderEngine, RenderResult  # noqa: E402
from render_service.engine.batching import RenderTask  # noqa: E402
from shared.jobs import RenderRequest  # noqa: E402


def jobs_of_one_shape(count: int, size: int, steps: int) -> list[RenderRequest]:
    shape = {"width": size, "height": size, "steps": steps, "negative_prompt": NEGATIVE}
    return [RenderRequest(canvas=canvas_with(n % 6), seed=n, guidance_scale=4.0 + n % 3, **shape) for n in range(count)]


def render_in_batches(engine: RenderEngine, jobs: list[RenderRequest], batch: int) -> tuple[float, list[np.ndarray]]:
    """Seconds for every job in batches of ``batch`` (the device synchronized at the end), and the images."""
    started = time.perf_counter()
    images = []
    for first in range(0, len(jobs), batch):
        for result in engine.render_batch([RenderTask(job) for job in jobs[first : first + batch]]):
            if not isinstance(result, RenderResult):
                raise result
            images.extend(np.asarray(image, dtype=np.int16) for image in result.images)
    if torch.device(engine.device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="CUDA, full-size random SDXL, fp16")
    parser.add_argument("--model", help="diffusers folder / hub id / .safetensors (default: the tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", type=int, help="square side in pixels (default 128, or 512 with --full)")
    parser.add_argument("--steps", type=int, help="steps per job (default 10, or 25 with --full)")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--batches", default="1,2,4,8", help="batch sizes to time (1: one job at a time)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs; default 1)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    args.shape, args.fp16_vae = None, False
    if args.full:
        if not torch.cuda.is_available():
            sys.exit("--full needs a CUDA GPU")
        args.shape, args.device = "full", "cuda"
        args.dtype = "fp16" if args.dtype == "auto" else args.dtype
    size, steps = args.size or (512 if args.full else 128), args.steps or (25 if args.full else 10)
    if torch.device(args.device if args.device != "auto" else "cpu").type == "cpu":
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    if 1 not in batches:
        batches.insert(0, 1)  # the baseline and the reference images

    engine = load_engine(args)
    jobs = jobs_of_one_shape(args.jobs, size, steps)
    machine = torch.cuda.get_device_name() if torch.device(engine.device).type == "cuda" else "cpu"
    print(f"{machine}, torch {torch.__version__}, {engine.dtype}, {args.jobs} jobs of {size}x{size}, {steps} steps")
    engine.render_batch([RenderTask(job.model_copy(update={"steps": 1})) for job in jobs[: max(batches)]])  # warm-up
    seconds: dict[int, float] = {}
    gaps: dict[int, int] = {}
    reference: list[np.ndarray] = []
    for _ in range(args.repeats):
        for batch in batches:  # interleaved: a shared machine's load hits every batch size alike
            took, images = render_in_batches(engine, jobs, batch)
            seconds[batch] = min(seconds.get(batch, took), took)
            if batch == 1:
                reference = reference or images
            else:
                gaps[batch] = max(int(np.abs(a - b).max()) for a, b in zip(images, reference, strict=True))
    report: dict[str, Any] = {"machine": machine, "size": size, "steps": steps, "jobs": args.jobs, "rows": []}
    print(f"{'batch':>5} {'seconds':>8} {'images/min':>10} {'speed-up':>8} {'max px gap':>10}")
    for batch in batches:
        row = {"batch": batch, "seconds": seconds[batch], "images_per_minute": 60 * args.jobs / seconds[batch],
               "speedup": seconds[1] / seconds[batch], "max_pixel_gap": gaps.get(batch, 0)}  # fmt: skip
        report["rows"].append(row)
        print(f"{batch:>5} {row['seconds']:>8.2f} {row['images_per_minute']:>10.1f} {row['speedup']:>8.2f} "
              f"{row['max_pixel_gap']:>10}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
