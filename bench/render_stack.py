"""The render stack the queue benchmarks measure: a private redis-server, the render API and one worker
(the tiny random-weight model unless a model is given) as real processes, exactly as deployed.

Imported by ``queue_bench.py`` and ``job_footprint.py``, which put the repository root on ``sys.path`` first.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from shared.cli.stack import free_port

ROOT = Path(__file__).resolve().parent.parent


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


@dataclass
class RenderStack:
    redis_url: str
    api: str
    """The render API's base URL."""
    worker: subprocess.Popen[bytes]
    workdir: Path
    """Where the logs (``redis.log``, ``api.log``, ``worker.log``) and the tiny model are."""
    ready_seconds: float
    """From the worker's start until it was ready (model loaded, warmed up)."""


@contextlib.contextmanager
def render_stack(
    name: str,
    prefix: str,
    model: str | None = None,
    api_env: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    log_level: str = "WARNING",
    ready_timeout: float = 300.0,
    stop_timeout: float = 15.0,
) -> Iterator[RenderStack]:
    """Start the stack (logs in a new temporary folder named after ``name``), wait until the worker is
    ready, and stop every process on the way out. Exits with status 2 if redis-server is not on PATH."""
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server not found on PATH", file=sys.stderr)
        raise SystemExit(2)
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    redis_port, api_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    children: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
        child = subprocess.Popen(args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        children.append(child)
        return child

    try:
        spawn([binary, "--port", str(redis_port), "--save", "", "--appendonly", "no"], {}, "redis")
        if model is None:
            from render_service.engine.tiny import build_tiny_model

            print("building the tiny model ...", file=sys.stderr)
            model = str(build_tiny_model(workdir / "tiny-model"))
        env = {"OMOST_REDIS_URL": redis_url, "OMOST_RENDER_KEY_PREFIX": prefix, "OMOST_RENDER_LOG_LEVEL": log_level}
        spawn([sys.executable, "-m", "render_service"], {**env, "OMOST_RENDER_PORT": str(api_port), **(api_env or {})},
              "api")
        started = time.perf_counter()
        worker = spawn(
            [sys.executable, "-m", "render_service.worker"],
            {**env, "OMOST_RENDER_MODEL": model, **(worker_env or {})},
            "worker",
        )
        api = f"http://127.0.0.1:{api_port}"
        wait_http(f"{api}/healthz")
        print("waiting for the worker to load the model ...", file=sys.stderr)
        wait_http(f"{api}/readyz", timeout=ready_timeout)
        yield RenderStack(redis_url, api, worker, workdir, time.perf_counter() - started)
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
                child.wait(stop_timeout)
