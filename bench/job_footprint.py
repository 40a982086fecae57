"""What one render job costs Redis: bytes held per key and commands sent, measured on the real stack.

Starts a private redis-server, the render API and one worker (tiny random-weight model) as
processes, then for each job shape: resets Redis' command statistics, submits one job over HTTP,
waits for it to end, and reads ``MEMORY USAGE`` of every key the job left and ``INFO commandstats``.
Also measures the commands an idle worker sends per second, and the bytes a queued (not yet taken)
job adds to the stream. docs/scaling.md turns these into capacity figures.

Run: ``python bench/job_footprint.py`` (needs redis-server on PATH; about a minute on 2 cores).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from queue_bench import CANVAS  # noqa: E402 - needs bench/ on sys.path
from render_stack import machine, render_stack  # noqa: E402

PREFIX = "fp:"
SHAPES = [
    {"width": 256, "height": 256, "steps": 10, "num_images": 1},
    {"width": 256, "height": 256, "steps": 20, "num_images": 2},
]
"""Small, so that it runs on a loaded 2-core box: bytes scale with pixels (PNG) and steps (events)."""


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def run_job(http: httpx.Client, client: redis.Redis, shape: dict[str, int], seed: int) -> None:
    client.config_resetstat()
    job_id = http.post("/v1/renders", json={"canvas": CANVAS, **shape, "seed": seed}).json()["id"]
    polls = 0
    while (record := http.get(f"/v1/renders/{job_id}").json())["status"] not in ("succeeded", "failed", "canceled"):
        polls += 1
        time.sleep(0.5)
    calls = command_calls(client)
    calls["hgetall"] -= polls + 1  # our own GET /v1/renders polls (one HGETALL each), not the job's cost
    if record["status"] != "succeeded":
        raise RuntimeError(f"job ended {record['status']}: {record.get('error')}")
    keys = sorted(k.decode() for k in client.scan_iter(match=f"{PREFIX}render:{job_id}*"))
    sizes = {key.removeprefix(f"{PREFIX}render:{job_id}") or "(record)": client.memory_usage(key) for key in keys}
    events = client.xlen(f"{PREFIX}render:{job_id}:events")
    pngs = [client.strlen(k) for k in keys if ":image:" in k]
    total = sum(sizes.values())
    ignore = {"config|resetstat", "config", "info", "scan", "memory|usage", "strlen", "xlen"}
    job_calls = {k: v for k, v in calls.items() if k not in ignore}
    print(
        f"{shape['width']}x{shape['height']}, {shape['steps']} steps, {shape['num_images']} image(s): "
        f"{total:,} bytes in {len(keys)} keys {sizes}; {events} events; PNG bytes {pngs}; "
        f"worker_total {record['timings'].get('worker_total', 0):.1f} s; "
        f"{sum(job_calls.values())} commands for the job (submit, render, result) {job_calls}"
    )


def main() -> int:
    with render_stack("job-footprint", PREFIX) as stack:
        client = redis.Redis.from_url(stack.redis_url)
        print(f"machine: {machine()}, redis-server {client.info('server')['redis_version']}")
        with httpx.Client(base_url=stack.api, timeout=60) as http:
            for n, shape in enumerate(SHAPES, start=1):
                run_job(http, client, shape, n)

            client.config_resetstat()
            time.sleep(10)
            idle = sum(command_calls(client).values()) / 10
            print(f"idle worker: {idle:.1f} commands/s (XREADGROUP BLOCK, heartbeats, reclaim scans)")

            stack.worker.send_signal(signal.SIGTERM)
            stack.worker.wait(60)
            stream = f"{PREFIX}renders"
            before = client.memory_usage(stream) or 0
            for n in range(100):
                http.post("/v1/renders", json={"canvas": CANVAS, **SHAPES[0], "seed": 100 + n})
            after = client.memory_usage(stream, samples=0) or 0
            records = [k for k in client.scan_iter(match=f"{PREFIX}render:*", count=1000) if k.count(b":") == 2]
            record = client.memory_usage(records[-1])
            print(f"a queued job: stream entry {(after - before) / 100:.0f} bytes (100 queued), record {record} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
