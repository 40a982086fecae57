"""One side of ``bench/gpu.sh --quick``: compiled stock vs ours on the full-size random SDXL, fast.

Compiling the full UNet takes about 100 s per side, and compiling is mostly single-threaded Python,
so the sides run as separate processes that compile *at the same time* and then take turns on the
GPU for the timed runs (files in ``--dir`` are the baton), which keeps the whole comparison near one
compile's time. Sides:

* ``stock``: diffusers' ``StableDiffusionXLPipeline`` with ``torch.compile(unet, fullgraph=True)``;
* ``flex``: our engine compiled with regional attention through FlexAttention (``set_attention("flex")``);
* ``sdpa``: our engine compiled with the SDPA path (the default);
* ``packed``: our engine compiled with packed attention (``set_attention("packed")``: only the
  pixel-token pairs a region allows, FlashAttention's varlen kernel; not yet measured), and its
  eager denoise times beside the eager SDPA path's;
* ``graphs``: the SDPA path compiled with ``mode="reduce-overhead"`` (CUDA graphs: one replay per
  step instead of ~1,500 kernel launches; not yet measured);
* ``stock-tuned`` and ``tuned``: stock and our SDPA path with a channels-last UNet and the inductor
  flags of diffusers' SDXL speed-up tutorial (:data:`TUNED`; not yet measured); ``tuned`` also
  compiles the VAE decoder, for the end-to-end figure. The goal compares like with like: tuned ours
  against tuned stock.

Before compiling, our sides render the same jobs eagerly through the SDPA path: the equivalence
reference (its denoise seconds are reported as ``eager``).

Each prints its figures and writes ``<side>.json``: per region count the denoise seconds (the same
step clock as ``render_bench.py``), our end-to-end ``render`` seconds, the peak GPU memory of the
whole run (decode included on both sides), compile seconds, dynamo's graph count; our sides add
their compiled images' grey-level gap to the eager SDPA path's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.render_bench import StepClock, Stock, canvas_with, ours, peak_gib, reset_peak  # noqa: E402
from render_service.engine import RenderEngine  # noqa: E402
from render_service.engine.tiny import FULL, TINY, build_random_pipeline  # noqa: E402

ORDER = ("stock", "flex", "sdpa", "packed", "graphs", "stock-tuned", "tuned")
TUNED = ("stock-tuned", "tuned")
"""Sides compiled the way diffusers' "accelerate inference" tutorial compiles SDXL: channels-last
UNet and its inductor flags (1x1 convolutions as matmuls, coordinate-descent tuning, no epilogue
fusion), default mode (max-autotune's kernel search would not fit the time)."""


def tune_inductor(unet: torch.nn.Module) -> None:
    import torch._inductor.config as inductor

    inductor.conv_1x1_as_mm = True
    inductor.coordinate_descent_tuning = True
    inductor.epilogue_fusion = False
    inductor.coordinate_descent_check_all_directions = True
    unet.to(memory_format=torch.channels_last)


def wait_for(paths: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {[p.name for p in paths if not p.exists()]}")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=ORDER, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="where the sides leave batons and JSON")
    parser.add_argument("--sides", default=",".join(ORDER), help="the sides taking part, in timing order")
    parser.add_argument("--regions", default="1,5,12")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda", help="cpu with --tiny --backend eager: a smoke test")
    parser.add_argument("--tiny", action="store_true", help="the tiny shape instead of full-size SDXL")
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    device = args.device
    dtype = torch.float16 if device == "cuda" else torch.float32
    sides = args.sides.split(",")
    side, folder = args.side, args.dir
    counts = [int(n) for n in args.regions.split(",")]
    report: dict[str, Any] = {"side": side, "size": args.size, "steps": args.steps, "rows": {}}

    def clock() -> StepClock:
        return StepClock(device, False)

    def log(text: str) -> None:
        print(f"[{side} {time.strftime('%H:%M:%S')}] {text}", flush=True)

    try:
        pipeline = build_random_pipeline(TINY if args.tiny else FULL, device=device)
        engine = RenderEngine.from_pipeline(pipeline, model_name="random-sdxl", device=device, dtype=dtype)
        reference: dict[int, list[np.ndarray]] = {}
        if not side.startswith("stock"):
            report["eager"] = {}
            for count in counts:  # the equivalence reference: eager, SDPA path
                denoise, _, reference[count] = ours(engine, canvas_with(count), args.size, args.steps, clock())
                report["eager"][count] = {"sdpa": denoise}
            log(f"eager SDPA reference rendered: {report['eager']}")
        if side == "packed":
            for count in counts:  # warm now: eager SDPA again, then eager packed, turn by turn
                row = report["eager"][count]
                for attention in ("sdpa", "packed"):
                    engine.set_attention(attention)
                    denoise, _, images = ours(engine, canvas_with(count), args.size, args.steps, clock())
                    row[f"{attention}_warm"] = denoise
                gaps = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(reference[count], images, strict=True)]
                row["packed_max_gap"] = int(max(g.max() for g in gaps))
            log(f"eager packed rendered: {report['eager']}")
        started = time.perf_counter()
        if side in TUNED:  # process-wide flags: each side is its own process
            tune_inductor(engine.unet)
        if side.startswith("stock"):
            stock = Stock(engine, canvas_with(1).global_description.description)
            stock.pipe.unet = torch.compile(stock.unet, backend=args.backend, fullgraph=True)
            stock.denoise(args.size, 2, clock())
        else:
            mode = "reduce-overhead" if side == "graphs" else None
            engine.compile_unet(backend=args.backend, mode=mode)
            if side == "flex":  # a compiled-only backend: chosen once the UNet is compiled
                engine.set_attention("flex")
            if side == "tuned":
                # The decode is most of what end to end adds to denoising; tiles or whole, one
                # decoder call per image, so at most two shapes compile.
                engine.vae.decoder = torch.compile(engine.vae.decoder, backend=args.backend, fullgraph=True)
            ours(engine, canvas_with(1), args.size, 2, clock())
        report["compile_s"] = time.perf_counter() - started
        log(f"compiled, first call {report['compile_s']:.1f} s")
    except Exception as exc:  # reported, and the baton passed on, so the other sides still run
        traceback.print_exc()
        report["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        (folder / f"{side}.json").write_text(json.dumps(report, indent=2))
        (folder / f"{side}.ready").touch()
        (folder / f"{side}.done").touch()
        return 1
    (folder / f"{side}.ready").touch()
    try:
        # Timed runs one side at a time, after every side has compiled (compiling uses the GPU too).
        wait_for([folder / f"{s}.ready" for s in sides], timeout=600)
        before = sides[: sides.index(side)]
        wait_for([folder / f"{s}.done" for s in before], timeout=600)
        for count in counts:
            best: dict[str, float] = {}
            peak = 0.0
            images: list[np.ndarray] = []
            for _ in range(args.repeats):
                reset_peak(device)
                if side.startswith("stock"):
                    times = {"denoise": stock.denoise(args.size, args.steps, clock())}
                else:
                    denoise, total, images = ours(engine, canvas_with(count), args.size, args.steps, clock())
                    times = {"denoise": denoise, "e2e": total}
                peak = max(peak, peak_gib(device) or 0.0)
                best = {k: min(v, best.get(k, v)) for k, v in times.items()}
            row: dict[str, Any] = {**best, "peak_gib": peak}
            if count in reference:
                gaps = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(reference[count], images, strict=True)]
                row["grey_gap_vs_eager_sdpa"] = {"max": int(max(g.max() for g in gaps)), "mean": float(np.mean(gaps))}
            report["rows"][count] = row
            log(f"{count} regions: {row}")
            if side.startswith("stock"):
                break  # stock's job does not depend on the canvas: one row serves every count
        report["dynamo_unique_graphs"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        report["device"] = torch.cuda.get_device_name() if device == "cuda" else device
    except Exception as exc:
        traceback.print_exc()
        report["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        (folder / f"{side}.json").write_text(json.dumps(report, indent=2))
        (folder / f"{side}.done").touch()
    return 0 if "error" not in report else 1


def summary(folder: Path) -> None:
    """The table of ``gpu.sh --quick`` from the sides' JSON."""
    reports = {s: json.loads((folder / f"{s}.json").read_text()) for s in ORDER if (folder / f"{s}.json").exists()}
    for name, report in reports.items():
        extra = f", error: {report['error'][:300]}" if "error" in report else ""
        print(f"{name}: compile {report.get('compile_s', float('nan')):.1f} s, graphs "
              f"{report.get('dynamo_unique_graphs')}{extra}")  # fmt: skip

    def stock_seconds(name: str) -> float | None:
        rows = reports.get(name, {}).get("rows", {})
        return next(iter(rows.values()), {}).get("denoise")

    for count, row in reports.get("packed", {}).get("eager", {}).items():
        print(f"eager, {count} regions: denoise s {row}")
    print(f"{'side':<12}{'regions':>8}{'denoise s':>10}{'/ stock':>8}{'e2e s':>8}{'peak GiB':>9}  gap vs eager SDPA")
    for name in ORDER:
        stock_s = stock_seconds("stock-tuned" if name in TUNED else "stock")  # like with like
        for count, row in reports.get(name, {}).get("rows", {}).items():
            ratio = row["denoise"] / stock_s if stock_s else float("nan")
            print(f"{name:<12}{count:>8}{row['denoise']:>10.3f}{ratio:>8.2f}{row.get('e2e', float('nan')):>8.3f}"
                  f"{row['peak_gib']:>9.2f}  {row.get('grey_gap_vs_eager_sdpa', '')}")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["summary"]:
        summary(Path(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
