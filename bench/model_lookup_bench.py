"""What the model registry costs a submit: Redis round trips, commands and time of the render API's
submit path without HTTP (``fit_model`` then ``submit_render``, as ``POST /v1/renders`` runs them),
with 2, 10 and 100 registered workers serving two models (half each).

Starts a private redis-server. The workers are registrations only (what a worker's heartbeat writes:
its ``{p}worker:{name}`` hash with the model it serves, ``{p}workers`` and the model's registration),
so no model is loaded. Round trips are counted where redis-py writes a request to its socket (one
write per command, or per pipeline). Compare two versions by running the same file against each:
``PYTHONPATH=/path/to/other/checkout python bench/model_lookup_bench.py`` measures that checkout's code
(this file appends its own repository root to ``sys.path`` only after ``PYTHONPATH``).

Run: ``python bench/model_lookup_bench.py [--submits 2000]`` (needs redis-server on PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # after PYTHONPATH: another checkout given there is the one measured

import redis  # noqa: E402
import redis.asyncio  # noqa: E402
from redis.asyncio.connection import AbstractConnection  # noqa: E402

from shared.cli.stack import free_port  # noqa: E402
from shared.jobs import RenderRequest  # noqa: E402
from shared.models import ModelInfo  # noqa: E402
from shared.queue import QueueKeys, QueueSettings, RenderQueue  # noqa: E402
from shared.queue.models import SERVES_FIELD, register_model  # noqa: E402
from shared.service.submission import fit_model, submit_render  # noqa: E402

CANVAS = {"global_description": {"description": "a lighthouse at dusk", "HTML_web_color_name": "navy"}}
SDXL = ModelInfo(
    name="default", family="sdxl", source="tiny", default_steps=25, default_guidance_scale=5.0,
    default_sampler="dpmpp_2m_karras", samplers=["dpmpp_2m_karras", "euler"], size_multiple=8,
    options=["negative_prompt", "hires_fix", "initial_latent_strength"],
)  # fmt: skip
FLUX = ModelInfo(
    name="flux", family="flux", variant="dev", source="tiny-flux", default_steps=28, default_guidance_scale=3.5,
    default_sampler="euler", samplers=["euler"], size_multiple=16, options=["flux"],
)  # fmt: skip


class RoundTrips:
    """Counts requests written to Redis sockets (a pipeline is one) while installed."""

    def __init__(self) -> None:
        self.count = 0
        self._original = AbstractConnection.send_packed_command

    def __enter__(self) -> RoundTrips:
        original = self._original

        async def counted(conn: AbstractConnection, command: Any, check_health: bool = True) -> None:
            self.count += 1
            await original(conn, command, check_health)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        AbstractConnection.send_packed_command = self._original  # type: ignore[method-assign]


def register_fleet(url: str, keys: QueueKeys, workers: int) -> None:
    """``workers`` registrations, half serving each model, as their heartbeats write them."""
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    now = time.time()
    for n in range(workers):
        info = SDXL if n % 2 == 0 else FLUX
        name = f"bench-worker-{n}"
        pipe.hset(keys.worker(name), mapping={SERVES_FIELD: info.name, "model": info.source})
        pipe.expire(keys.worker(name), 600)
        pipe.zadd(keys.workers, {name: now})
        register_model(pipe, keys, info, 600)
    pipe.execute()
    client.close()


async def measure(url: str, prefix: str, submits: int) -> tuple[float, float, float]:
    """Round trips per submit, commands per submit, median microseconds per submit."""
    client = redis.asyncio.Redis.from_url(url)
    queue = RenderQueue(client, QueueSettings(key_prefix=prefix, max_queue_depth=None))
    requests = [
        RenderRequest.model_validate({"canvas": CANVAS, "width": 64, "height": 64, "model": model})
        for model in ("default", "flux")
    ]
    for request in requests:  # warm-up: connections, script cache
        await submit_render(queue, await fit_model(queue, request), submitter="bench")
    before = int((await client.info("stats"))["total_commands_processed"])
    times = []
    with RoundTrips() as trips:
        for n in range(submits):
            request = requests[n % 2]
            started = time.perf_counter()
            fitted = await fit_model(queue, request)  # as POST /v1/renders: fit, then submit_render (fits too)
            await submit_render(queue, fitted, submitter="bench")
            times.append(time.perf_counter() - started)
    after = int((await client.info("stats"))["total_commands_processed"])
    await client.aclose()
    commands = (after - before - 1) / submits  # less the INFO itself
    return trips.count / submits, commands, 1e6 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--workers", default="2,10,100")
    parser.add_argument("--no-cache", action="store_true", help="every lookup reads Redis (no RenderQueue.model cache)")
    args = parser.parse_args()
    if args.no_cache:
        import shared.queue.repository as repository

        if not hasattr(repository, "MODEL_CACHE_SECONDS"):
            print("this checkout has no model cache", file=sys.stderr)
            return 2
        repository.MODEL_CACHE_SECONDS = 0.0
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server not found on PATH", file=sys.stderr)
        return 2
    import shared

    cache = " (model cache off)" if args.no_cache else ""
    print(f"code measured: {Path(shared.__file__).resolve().parent.parent}{cache}")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="model-lookup-") as folder:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            client = redis.Redis.from_url(url)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            print("workers  round trips/submit  commands/submit  median µs/submit")
            for workers in (int(w) for w in args.workers.split(",")):
                prefix = f"bench-{workers}:"
                register_fleet(url, QueueKeys(prefix), workers)
                trips, commands, micros = asyncio.run(measure(url, prefix, args.submits))
                print(f"{workers:7d}  {trips:18.1f}  {commands:15.1f}  {micros:16.0f}")
                client.flushdb()
        finally:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
