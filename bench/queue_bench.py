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
import signal
import statistics
import sys
import time
from pathlib import Path

import httpx
import redis.asyncio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from render_stack import machine, render_stack  # noqa: E402 - bench/ is on sys.path when run as a script

from shared.jobs import RenderRequest  # noqa: E402 - needs the repo root on sys.path first
from shared.queue import submit  # noqa: E402

CANVAS = {"global_description": {"description": "a lighthouse at dusk", "HTML_web_color_name": "navy"}}
BODY = {"canvas": CANVAS, "width": 64, "height": 64, "steps": 2}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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

    api_env = {"OMOST_QUEUE_MAX_DEPTH": "1000000"}
    worker_env = {"OMOST_RENDER_BLOCK_SECONDS": "5"}
    with render_stack("queue-bench", "bench:", args.model, api_env, worker_env) as stack:
        measure_latency(stack.api, 2)  # warm-up: first renders pay one-off costs
        latencies = measure_latency(stack.api, args.latency_jobs)
        stack.worker.send_signal(signal.SIGTERM)
        stack.worker.wait(60)
        api_rate = asyncio.run(measure_api_throughput(stack.api, args.requests, args.concurrency))
        direct = measure_direct_throughput(stack.redis_url, "bench-direct:", args.requests, args.concurrency)
        direct_rate = asyncio.run(direct)

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
