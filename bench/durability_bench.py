"""What waiting for a replica costs a submit: the submit script alone vs the script + ``WAIT 1 <ms>``
(``OMOST_REDIS_WAIT_REPLICAS=1``), on a primary with one replica found through three Sentinels (real
``redis-server`` processes), one client after another and 16 at once. Figures in docs/scaling.md.

    python bench/durability_bench.py --jobs 500
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.jobs import RenderRequest  # noqa: E402 - needs the repo root on sys.path first
from shared.queue import Durability, submit  # noqa: E402
from shared.queue.connect import async_client  # noqa: E402
from tests.support import SentinelCluster  # noqa: E402

REQUEST = RenderRequest.model_validate(
    {"canvas": {"global_description": {"description": "a cat", "HTML_web_color_name": "red"}}, "width": 64,
     "height": 64, "steps": 2}
)  # fmt: skip


async def measure(url: str, durability: Durability, jobs: int, concurrency: int) -> tuple[list[float], float]:
    client = async_client(url, max_connections=concurrency + 2, pool_timeout=30)
    prefix = f"durability-{durability.replicas}-{concurrency}-{time.monotonic_ns()}:"
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(jobs):
        queue.put_nowait(n)

    async def one_client() -> None:
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            await submit(client, REQUEST, prefix=prefix, durability=durability, max_queue_depth=None)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await client.aclose()
    return latencies, jobs / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args(argv)
    cluster = SentinelCluster().start()
    try:
        print(f"{'durability':<22} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'submits/s':>10}")
        for concurrency in (1, 16):
            for durability in (Durability(0), Durability(1, 1000)):
                latencies, rate = asyncio.run(measure(cluster.url, durability, args.jobs, concurrency))
                latencies.sort()
                p50 = statistics.median(latencies) * 1000
                p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000
                name = "WAIT 1 1000" if durability.replicas else "no WAIT"
                print(f"{name:<22} {concurrency:>7} {p50:>8.2f} {p99:>8.2f} {rate:>10.0f}")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
