"""Queue benchmark: submit->start latency with an idle worker, and API submissions per second.

Starts a private redis-server, the render API and one worker (tiny random-weight model unless
``--model`` is given) as real processes, exactly as deployed, then:

1. latency: submits one small job at a time to the idle worker and measures the time from just
   before the HTTP POST to the worker's ``started_at`` (same machine, same clock);
2. throughput: stops the worker and POSTs ``--requests`` jobs from ``--concurrency`` concurrent
   connections, reporting accepted submissions per second (and, for reference, the same through
   ``shared.queue.submit`` without HTTP).

Run: ``python bench/queue_bench.py`` (needs redis-server on PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis.asyncio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.jobs import RenderRequest  # noqa: E402 - needs the repo root on sys.path first
from shared.queue import submit  # noqa: E402

CANVAS = {"global_description": {"description": "a lighthouse at dusk", "HTML_web_color_name": "navy"}}
BODY = {"canvas": CANVAS, "width": 64, "height": 64, "steps": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, {platform.system()}"


def measure_latency(api: str, jobs: int) -> list[float]:
    latencies = []
    with httpx.Client(base_url=api, timeout=30) as http:
        for n in range(jobs):
            time.sleep(0.3)  # let the worker go back to waiting in XREADGROUP: it is idle
            submitted = time.time()
            job_id = http.post("/v1/renders", json={**BODY, "seed": n}).json()["id"]
            while True:
                record = http.get(f"/v1/renders/{job_id}").json()
                if record["status"] in ("succeeded", "failed", "canceled"):
                    break
                time.sleep(0.02)
            if record["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {record['status']}: {record['error']}")
            latencies.append(record["started_at"] - submitted)
    return latencies


async def measure_api_throughput(api: str, requests: int, concurrency: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    statuses: list[int] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            n = queue.get_nowait()
            answer = await http.post("/v1/renders", json={**BODY, "seed": n})
            statuses.append(answer.status_code)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=api, timeout=60, limits=limits) as http:
        await http.get("/healthz")
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if any(s != 202 for s in statuses):
        raise RuntimeError(f"non-202 answers: {sorted(set(statuses))}")
    return requests / elapsed


async def measure_direct_throughput(redis_url: str, prefix: str, requests: int, concurrency: int) -> float:
    client = redis.asyncio.Redis.from_url(redis_url)
    request = RenderRequest.model_validate(BODY)
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            await submit(client, request, prefix=prefix)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    return requests / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model for the worker (default: build the tiny test model)")
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server not found on PATH", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    redis_port, api_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    api = f"http://127.0.0.1:{api_port}"
    prefix = "bench:"
    children: list[subprocess.Popen] = []

    def spawn(args_: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
        child = subprocess.Popen(args_, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        children.append(child)
        return child

    try:
        spawn([binary, "--port", str(redis_port), "--save", "", "--appendonly", "no"], {}, "redis")
        model = args.model
        if model is None:
            from render_service.engine.tiny import build_tiny_model

            print("building the tiny model ...", file=sys.stderr)
            model = str(build_tiny_model(workdir / "tiny-model"))
        env = {"OMOST_REDIS_URL": redis_url, "OMOST_RENDER_KEY_PREFIX": prefix, "OMOST_RENDER_LOG_LEVEL": "WARNING"}
        api_env = {**env, "OMOST_RENDER_PORT": str(api_port), "OMOST_RENDER_MAX_QUEUE_DEPTH": "1000000"}
        spawn([sys.executable, "-m", "render_service"], api_env, "api")
        worker = spawn(
            [sys.executable, "-m", "render_service.worker"],
            {**env, "OMOST_RENDER_MODEL": model, "OMOST_RENDER_BLOCK_SECONDS": "5"},
            "worker",
        )
        wait_http(f"{api}/healthz")
        print("waiting for the worker to load the model ...", file=sys.stderr)
        wait_http(f"{api}/readyz", timeout=300)

        measure_latency(api, 2)  # warm-up: first renders pay one-off costs
        latencies = measure_latency(api, args.latency_jobs)
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        api_rate = asyncio.run(measure_api_throughput(api, args.requests, args.concurrency))
        direct = measure_direct_throughput(redis_url, "bench-direct:", args.requests, args.concurrency)
        direct_rate = asyncio.run(direct)
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
                child.wait(15)

    ms = [1000 * x for x in latencies]
    print(f"machine: {machine()}")
    print(
        f"submit->start latency, idle worker ({len(ms)} jobs): median {statistics.median(ms):.1f} ms, "
        f"p95 {percentile(ms, 0.95):.1f} ms, max {max(ms):.1f} ms"
    )
    print(f"API submissions/s ({args.requests} POST /v1/renders, {args.concurrency} concurrent): {api_rate:.0f}")
    print(f"submit() calls/s without HTTP ({args.concurrency} concurrent): {direct_rate:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
