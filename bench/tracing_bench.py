"""What OpenTelemetry tracing costs the render path: today's code (before tracing), tracing off, tracing on.

The render path is the worker's: claim, render (the tiny random-weight model unless ``--model``),
PNG encode, settle. Each variant is a child process that loads the engine, runs a real
:class:`~render_service.worker.core.Worker` against a private redis-server, renders one job (what
happens once per process), then ``--jobs`` queued jobs, and reports their CPU seconds (every thread
of the process, the exporter's included) and their rendering window (first ``started_at`` to last
``finished_at``), per job. On a shared machine CPU time is the steadier figure. "today" runs
the tree of ``--baseline`` (default: the commit before tracing landed), extracted with ``git archive``;
"on" exports every span over OTLP/HTTP to a receiver in this process, as to a collector. Variants run
interleaved, ``--rounds`` times, in a new order each round, and each keeps its median: the machine may
be shared, so the load average is printed beside the figures.

Run: ``python bench/tracing_bench.py`` (needs git and redis-server on PATH).

Beside the end-to-end figures it times, in isolation, the tracing calls of one job with its Redis
round trips, tracing off and then on (``--calls`` times): on a loaded machine the end-to-end spread
is wider than the goals (0.5 % off, 2 % on), while the isolated difference is what tracing adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CANVAS = {
    "global_description": {"description": "a lighthouse at dusk", "HTML_web_color_name": "navy"},
    "local_descriptions": [
        {
            "location": "on the left",
            "offset": "slightly to the left",
            "area": "a small vertical area",
            "distance_to_viewer": 5.0,
            "description": "a lighthouse",
            "detailed_descriptions": ["white tower", "red stripes"],
            "tags": "lighthouse",
            "atmosphere": "calm",
            "style": "painting",
            "quality_meta": "high quality",
            "HTML_web_color_name": "white",
        }
    ],
}


# --- the child: one variant's render path -----------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Run in the tree on ``sys.path[0]`` (today's, or this one): queue the jobs, render them, report."""
    import inspect

    import redis
    import torch

    from render_service.engine import RenderEngine
    from render_service.settings import RenderSettings
    from render_service.worker.core import Worker
    from shared.jobs import RenderRequest
    from shared.queue import JobRecord, QueueKeys, submit

    torch.set_num_threads(args.threads)
    configure = _configure_tracing()
    settings = RenderSettings(
        redis_url=args.redis_url, key_prefix=args.prefix, model=args.model, block_seconds=0.2, log_level="WARNING"
    )
    if configure is not None:
        configure("omost-render-worker")
    engine = RenderEngine.load(args.model, device="cpu")
    engine.warm_up([(args.size, args.size)], steps=1)
    request = RenderRequest.model_validate(
        {"canvas": CANVAS, "width": args.size, "height": args.size, "steps": args.steps}
    )
    carries_trace = "trace_context" in inspect.signature(submit).parameters

    async def queue_jobs(count: int) -> list[str]:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(args.redis_url)
        trace = {"traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"} if carries_trace else None
        extra: dict[str, Any] = {"trace_context": trace} if trace else {}
        ids = [(await submit(client, request, prefix=args.prefix, **extra)).job_id for _ in range(count)]
        await client.aclose()
        return ids

    worker = Worker(settings, engine)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    keys, client = QueueKeys(args.prefix), redis.Redis.from_url(args.redis_url)

    def rendered(ids: list[str]) -> list[JobRecord]:
        while True:
            records = [JobRecord.decode(client.hgetall(keys.job(job_id))) for job_id in ids]
            if any(r.status in ("failed", "canceled") for r in records):
                raise SystemExit(f"a job did not succeed: {[r.error for r in records]}")
            if all(r.status == "succeeded" for r in records):
                return records
            time.sleep(0.05)

    rendered(asyncio.run(queue_jobs(1)))  # a first job: what is done once per process is not per job
    cpu_started = time.process_time()
    done = rendered(asyncio.run(queue_jobs(args.jobs)))
    cpu = time.process_time() - cpu_started  # every thread of the worker: render, settle, heartbeat, export
    worker.request_stop()
    thread.join(30)
    window = max(r.finished_at or 0.0 for r in done) - min(r.started_at or 0.0 for r in done)
    print(json.dumps({"seconds_per_job": window / len(done), "cpu_seconds_per_job": cpu / len(done)}))


def _configure_tracing() -> Any:
    try:
        from shared.service.tracing import configure_tracing
    except ImportError:  # today's tree: no tracing
        return None
    return configure_tracing


# --- the isolated cost of tracing off ------------------------------------------------------------------


def job_calls_seconds(calls: int, steps: int, redis_url: str) -> float:
    """CPU seconds of one job's tracing calls and its Redis round trips (a progress write and a cancel
    check a step, 3 for the claim and settle), measured ``calls`` times; tracing on or off, as this
    process is set up. Run off, then on: the difference is what tracing adds to a job."""
    import redis
    from opentelemetry import trace

    from shared.jobs import RenderRequest
    from shared.service.tracing import child_span, context_from, request_attributes, traceparent_of, tracer

    client = redis.Redis.from_url(redis_url)
    request = RenderRequest.model_validate({"canvas": CANVAS})
    carrier = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}
    engine_tracer = trace.get_tracer("omost.engine")
    started = time.process_time()
    for _ in range(calls):
        span = tracer.start_span("render job", context=context_from(carrier), attributes=request_attributes(request))
        traceparent_of(span)
        with child_span(span, "claim"):
            client.ping()
        span.set_attributes({"omost.render.model": "m"})
        with child_span(span, "render"):
            for phase in ("encode", "denoise", "decode"):
                with engine_tracer.start_as_current_span(phase):
                    if phase == "denoise":
                        for step in range(steps):
                            current = trace.get_current_span()
                            if current.is_recording():
                                current.add_event("step", {"omost.step": step, "omost.steps": steps})
                            client.ping()
                            client.ping()
        for name in ("png encode", "settle"):
            with child_span(span, name), tracer.start_as_current_span("image store"):
                client.ping()
        span.end()
    provider = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush()  # the export's CPU counts too
    client.close()
    return (time.process_time() - started) / calls


# --- the parent -----------------------------------------------------------------------------------------


def baseline_commit(given: str | None) -> str:
    if given:
        return given
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "shared/service/tracing.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        raise SystemExit("cannot find the commit that added tracing; pass --baseline")
    return f"{added[-1]}^"


def extract(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    with tempfile.TemporaryFile() as file:
        file.write(archive)
        file.seek(0)
        with tarfile.open(fileobj=file) as tar:
            tar.extractall(into, filter="data")
    return into


def isolated(args: argparse.Namespace, redis_url: str, env: dict[str, str]) -> float:
    command = [sys.executable, str(ROOT / "bench" / "tracing_bench.py"), "--isolated", "--redis-url", redis_url]
    command += ["--calls", str(args.calls), "--steps", str(args.steps)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, cwd=ROOT, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def run_variant(
    tree: Path, args: argparse.Namespace, redis_url: str, prefix: str, env: dict[str, str]
) -> dict[str, float]:
    command = [sys.executable, str(ROOT / "bench" / "tracing_bench.py"), "--child", "--redis-url", redis_url]
    command += ["--prefix", prefix, "--model", args.model, "--jobs", str(args.jobs), "--steps", str(args.steps)]
    command += ["--size", str(args.size), "--threads", str(args.threads)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    child_env = {**clean, "PYTHONPATH": str(tree), "OMOST_BENCH_TREE": str(tree), **env}
    done = subprocess.run(command, env=child_env, capture_output=True, text=True, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(f"{prefix} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--isolated", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="bench:", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="a diffusers folder (default: the tiny random-weight model, built here)")
    parser.add_argument("--baseline", help="the commit of 'today' (default: the one before tracing landed)")
    parser.add_argument("--jobs", type=int, default=6, help="jobs per run")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each child")
    parser.add_argument("--calls", type=int, default=300, help="repetitions of the isolated measure")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.isolated:
        sys.path.insert(0, str(ROOT))
        from shared.service.tracing import configure_tracing

        configure_tracing("tracing-bench")  # on only when the environment asks
        print(job_calls_seconds(args.calls, args.steps, args.redis_url))
        return
    sys.path.insert(0, str(ROOT))
    from tests.otlp_receiver import OtlpReceiver
    from tests.support import RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="tracing-bench-"))
    if args.model is None:
        from render_service.engine.tiny import build_tiny_model

        args.model = str(build_tiny_model(workdir / "tiny-model"))
    commit = baseline_commit(args.baseline)
    today = extract(commit, workdir / "today")
    redis_server = RedisServer().start()
    results: dict[str, list[dict[str, float]]] = {"today": [], "off": [], "on": []}
    try:
        with OtlpReceiver() as receiver:
            trees = {
                "today": (today, {}),
                "off": (ROOT, {}),
                "on": (ROOT, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}),
            }
            loads = []
            for round_ in range(args.rounds):
                order = list(trees)
                random.shuffle(order)
                for name in order:
                    tree, env = trees[name]
                    loads.append(os.getloadavg()[0])
                    results[name].append(run_variant(tree, args, redis_server.url, f"b{round_}{name}:", env))
                    last = results[name][-1]
                    print(f"round {round_ + 1} {name:5s} {last}", file=sys.stderr)
            spans = len(receiver.spans)
            # In children, as the variants: the receiver's own decoding must not count.
            off_calls, on_calls = (
                isolated(args, redis_server.url, env) for env in ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
            )
    finally:
        redis_server.stop()
    print(f"render path, {args.jobs} jobs x {args.rounds} rounds, {args.size}x{args.size}, {args.steps} steps, "
          f"1 region, {args.threads} torch thread(s); today = {commit}")  # fmt: skip
    print(f"load average during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
    for key, what in (("cpu_seconds_per_job", "CPU s/job"), ("seconds_per_job", "wall s/job")):
        base = statistics.median(run[key] for run in results["today"])
        print(f"{what:11s} {'median':>8s} {'vs today':>9s} {'min':>8s} {'vs today':>9s}   every run")
        low = min(run[key] for run in results["today"])
        for name, runs in results.items():
            values = [run[key] for run in runs]
            median, least = statistics.median(values), min(values)
            every = " ".join(f"{v:.3f}" for v in values)
            versus, versus_min = (median / base - 1) * 100, (least / low - 1) * 100
            print(f"{name:11s} {median:8.3f} {versus:+8.2f}% {least:8.3f} {versus_min:+8.2f}%   {every}")
    print(f"spans received with tracing on: {spans} ({spans / (args.jobs * args.rounds):.0f} a job)")
    cpu = statistics.median(run["cpu_seconds_per_job"] for run in results["today"])
    added = on_calls - off_calls
    print(
        f"one job's tracing calls with its {2 * args.steps + 3} Redis round trips, in isolation ({args.calls} times):"
    )
    print(f"  off {off_calls * 1e3:.3f} ms, on {on_calls * 1e3:.3f} ms of CPU: tracing on adds {added * 1e3:.3f} ms "
          f"= {added / cpu * 100:.3f} % of a job's CPU here")  # fmt: skip


if __name__ == "__main__":
    if "--child" in sys.argv and os.environ.get("OMOST_BENCH_TREE"):
        sys.path.insert(0, os.environ["OMOST_BENCH_TREE"])
    main()
