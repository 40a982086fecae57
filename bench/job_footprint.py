"""What one render job costs Redis: bytes held per key and commands sent, measured on the real stack.

Starts a private redis-server, the render API and one worker (tiny random-weight model) as
processes, then for each job shape: resets Redis' command statistics, submits one job over HTTP,
waits for it to end, and reads ``MEMORY USAGE`` of every key the job left and ``INFO commandstats``.
Also measures the commands an idle worker sends per second, and the bytes a queued (not yet taken)
job adds to the stream. docs/scaling.md turns these into capacity figures.

Run: ``python bench/job_footprint.py`` (needs redis-server on PATH; about a minute on 2 cores).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from queue_bench import CANVAS, free_port, machine, wait_http  # noqa: E402 - needs bench/ on sys.path

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
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server not found on PATH", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="job-footprint-"))
    redis_port, api_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    api = f"http://127.0.0.1:{api_port}"
    children: list[subprocess.Popen] = []

    def spawn(args: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
        child = subprocess.Popen(args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        children.append(child)
        return child

    try:
        spawn([binary, "--port", str(redis_port), "--save", "", "--appendonly", "no"], {}, "redis")
        from render_service.engine.tiny import build_tiny_model

        model = str(build_tiny_model(workdir / "tiny-model"))
        env = {"OMOST_REDIS_URL": redis_url, "OMOST_RENDER_KEY_PREFIX": PREFIX, "OMOST_RENDER_LOG_LEVEL": "WARNING"}
        spawn([sys.executable, "-m", "render_service"], {**env, "OMOST_RENDER_PORT": str(api_port)}, "api")
        worker = spawn([sys.executable, "-m", "render_service.worker"], {**env, "OMOST_RENDER_MODEL": model}, "worker")
        wait_http(f"{api}/healthz")
        wait_http(f"{api}/readyz", timeout=300)
        client = redis.Redis.from_url(redis_url)
        print(f"machine: {machine()}, redis-server {client.info('server')['redis_version']}")
        with httpx.Client(base_url=api, timeout=60) as http:
            for n, shape in enumerate(SHAPES, start=1):
                run_job(http, client, shape, n)

            client.config_resetstat()
            time.sleep(10)
            idle = sum(command_calls(client).values()) / 10
            print(f"idle worker: {idle:.1f} commands/s (XREADGROUP BLOCK, heartbeats, reclaim scans)")

            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
            stream = f"{PREFIX}renders"
            before = client.memory_usage(stream) or 0
            for n in range(100):
                http.post("/v1/renders", json={"canvas": CANVAS, **SHAPES[0], "seed": 100 + n})
            after = client.memory_usage(stream, samples=0) or 0
            records = [k for k in client.scan_iter(match=f"{PREFIX}render:*", count=1000) if k.count(b":") == 2]
            record = client.memory_usage(records[-1])
            print(f"a queued job: stream entry {(after - before) / 100:.0f} bytes (100 queued), record {record} bytes")
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
                child.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
