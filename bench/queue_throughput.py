"""Throughput of one real render worker under a queue: images per minute vs the sum of single jobs.

Starts a private redis-server, the render API and one worker as real processes, exactly as
deployed (tiny random-weight model on the CPU unless ``--model``/``--device`` say otherwise), waits
until the worker is ready -- it warm-starts before it heartbeats: model loaded, compiled when
``--compile``, a dummy render -- and then runs the same 20 mixed jobs (sizes, region counts, steps,
images per job) twice:

1. **single**: one job at a time, each submitted only after the previous one finished, so the
   worker renders it alone; its time is the worker's own ``finished_at - started_at``;
2. **queue**: all 20 submitted at once; the wall time runs from the first POST to the last
   ``finished_at``.

With ``--batch N`` the worker batches waiting jobs of one shape (``OMOST_RENDER_BATCH_MAX_IMAGES``;
the single jobs are alone anyway), so the queue's figure includes what batching gains;
``--same-shape`` makes every job batchable. It prints images per minute under the queue and
``queue wall / sum of single-job times - 1``, the queue's overhead (target <= 3 %), plus the
overhead against the engine's own render time of the same queued jobs (what the worker adds around
``RenderEngine.render``: claims, progress, PNGs, records; a batch's time counted once).
The first single job against the same job in the queue shows whether the worker started warm. On
a shared machine the load average is printed with the figures: other processes inflate both sides.

    python bench/queue_throughput.py                                  # tiny model, CPU
    python bench/queue_throughput.py --model stabilityai/stable-diffusion-xl-base-1.0 \\
        --device cuda --dtype fp16 --compile --scale 8                # 512..1024 px on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.render_stack import machine, render_stack  # noqa: E402 - needs the repo root on sys.path

SUBJECTS = ["a red fox", "a lighthouse", "an old oak", "a sailing boat", "a paper lantern", "a sleeping cat"]
LOCATIONS = ["on the left", "on the right", "in the center", "on the top", "on the bottom"]


def canvas(regions: int) -> dict[str, Any]:
    local = [
        {"location": LOCATIONS[i % len(LOCATIONS)], "offset": "no offset", "area": "a small square area",
         "distance_to_viewer": float(regions - i), "description": f"{SUBJECTS[i % len(SUBJECTS)].capitalize()}.",
         "detailed_descriptions": [f"Fine detail on {SUBJECTS[i % len(SUBJECTS)]}."],
         "HTML_web_color_name": "orange"}
        for i in range(regions)
    ]  # fmt: skip
    return {"global_description": {"description": "A quiet harbour at dusk.", "HTML_web_color_name": "navy"},
            "local_descriptions": local}  # fmt: skip


def mixed_jobs(count: int, scale: int, seed: int, same_shape: bool = False) -> list[dict[str, Any]]:
    """``count`` jobs of mixed shape: sides of 8·scale·{8, 12, 16}, 0-5 regions, 2-6 steps, 1-2 images.

    ``same_shape``: every job 8·scale·12 square and 4 steps (what a worker can batch); canvases,
    seeds and image counts still differ.
    """
    rng = random.Random(seed)
    sides = [8 * scale * n for n in (8, 12, 16)]
    jobs = []
    for n in range(count):
        jobs.append(
            {"canvas": canvas(rng.randint(0, 5)), "width": rng.choice(sides), "height": rng.choice(sides),
             "steps": rng.choice([2, 3, 4, 6]), "num_images": rng.choice([1, 1, 1, 2]), "seed": n}
        )  # fmt: skip
        if same_shape:
            jobs[-1].update(width=sides[1], height=sides[1], steps=4)
    return jobs


def wait_done(http: httpx.Client, job_id: str, poll: float = 0.05) -> dict[str, Any]:
    while True:
        record = http.get(f"/v1/renders/{job_id}").json()
        if record["status"] in ("succeeded", "failed", "canceled"):
            if record["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {record['status']}: {record['error']}")
            return record
        time.sleep(poll)


def run_single(http: httpx.Client, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records = []
    for body in jobs:
        time.sleep(0.2)  # the worker is back in its blocking read: it takes the job idle, alone
        records.append(wait_done(http, http.post("/v1/renders", json=body).json()["id"]))
    return records


def run_queue(http: httpx.Client, jobs: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    first_post = time.time()
    ids = [http.post("/v1/renders", json=body).json()["id"] for body in jobs]
    records = [wait_done(http, job_id, poll=0.2) for job_id in ids]
    return max(r["finished_at"] for r in records) - first_post, records


def worker_seconds(record: dict[str, Any]) -> float:
    return record["finished_at"] - record["started_at"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: on a shared machine other processes stretch wall
    time, not this (with one torch thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model for the worker (default: build the tiny test model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", action="store_true", help="OMOST_RENDER_COMPILE=1 (warm-up compiles every size)")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--scale", type=int, default=1, help="image sides are 8·scale·{8,12,16} px (1: 64-128 px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="the worker's torch CPU threads (CPU runs)")
    parser.add_argument("--batch", type=int, default=1, help="OMOST_RENDER_BATCH_MAX_IMAGES (1: no batching)")
    parser.add_argument("--same-shape", action="store_true", help="every job one size and step count (batchable)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()

    jobs = mixed_jobs(args.jobs, args.scale, args.seed, args.same_shape)
    sizes = sorted({(j["width"], j["height"]) for j in jobs})
    worker_env = {
        "OMOST_RENDER_DEVICE": args.device, "OMOST_RENDER_DTYPE": args.dtype,
        "OMOST_RENDER_COMPILE": "1" if args.compile else "0",
        "OMOST_RENDER_WARM_UP_SIZES": ",".join(f"{w}x{h}" for w, h in sizes),
        "OMOST_RENDER_BLOCK_SECONDS": "5", "OMP_NUM_THREADS": str(args.threads),
        "OMOST_RENDER_BATCH_MAX_IMAGES": str(args.batch),
        "OMOST_RENDER_BATCH_MAX_PIXELS": str(max(w * h for w, h in sizes)),
    }  # fmt: skip
    load_before = os.getloadavg()
    with render_stack(
        "queue-throughput", "tp:", args.model, worker_env=worker_env, log_level="INFO", ready_timeout=1200,
        stop_timeout=30,
    ) as stack, httpx.Client(base_url=stack.api, timeout=60) as http:
        ready_s, workdir, pid = stack.ready_seconds, stack.workdir, stack.worker.pid
        cpu = [cpu_seconds(pid)]
        single = run_single(http, jobs)
        cpu.append(cpu_seconds(pid))
        queue_wall, queued = run_queue(http, jobs)
        cpu.append(cpu_seconds(pid))
    load_after = os.getloadavg()
    warm_lines = [line for line in (workdir / "worker.log").read_text().splitlines() if "warmed up" in line]

    images = sum(j["num_images"] for j in jobs)
    single_sum = sum(worker_seconds(r) for r in single)
    # Every job of a batch reports the batch's time: count it once.
    engine_sum = sum(r["timings"]["total"] / r["timings"].get("batch_jobs", 1) for r in queued)
    figures = {
        "machine": machine(),
        "device": args.device,
        "model": args.model or "tiny (random weights)",
        "compile": args.compile,
        "batch_max_images": args.batch,
        "queued_jobs_in_batches": sum("batch_jobs" in r["timings"] for r in queued),
        "jobs": len(jobs),
        "images": images,
        "sizes": [f"{w}x{h}" for w, h in sizes],
        "worker_ready_s": ready_s,
        "warm_up_logged_before_ready": bool(warm_lines),
        "single_sum_s": single_sum,
        "queue_wall_s": queue_wall,
        "queue_engine_sum_s": engine_sum,
        "images_per_minute_queue": 60 * images / queue_wall,
        "images_per_minute_single_sum": 60 * images / single_sum,
        "overhead_vs_single": queue_wall / single_sum - 1,
        "overhead_vs_engine": queue_wall / engine_sum - 1,
        "worker_cpu_s_single": cpu[1] - cpu[0],
        "worker_cpu_s_queue": cpu[2] - cpu[1],
        "cpu_overhead_vs_single": (cpu[2] - cpu[1]) / (cpu[1] - cpu[0]) - 1,
        "first_job_single_vs_queued": worker_seconds(single[0]) / worker_seconds(queued[0]),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    print(f"machine: {figures['machine']}; load average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    print(f"worker ready (loaded + warmed up) after {ready_s:.1f} s; warm-up log: {warm_lines[:1]}")
    print(f"{len(jobs)} jobs, {images} images, sizes {', '.join(figures['sizes'])}")
    print(f"sum of single-job times {single_sum:.2f} s -> {figures['images_per_minute_single_sum']:.1f} images/min")
    print(f"queue of {len(jobs)}: wall {queue_wall:.2f} s -> {figures['images_per_minute_queue']:.1f} images/min")
    print(f"queue overhead vs the single jobs {100 * figures['overhead_vs_single']:+.1f} % (target <= 3 %), "
          f"vs the engine's render time of the queued jobs {100 * figures['overhead_vs_engine']:+.1f} %")  # fmt: skip
    cpu_overhead = 100 * figures["cpu_overhead_vs_single"]
    print(f"worker CPU time: single jobs {figures['worker_cpu_s_single']:.2f} s, queue "
          f"{figures['worker_cpu_s_queue']:.2f} s -> overhead {cpu_overhead:+.1f} %")  # fmt: skip
    print(f"first job alone / same job in the queue: {figures['first_job_single_vs_queued']:.2f} (1.0: warm start)")
    if args.batch > 1:
        print(f"batching up to {args.batch} images: {figures['queued_jobs_in_batches']} of {len(jobs)} queued jobs "
              "shared a batch")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
