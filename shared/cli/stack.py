"""The whole stack on one machine as child processes: its own Redis (unless one is named), the
planner, the render API and one render worker per device.

Every service is started exactly as a deployment starts it (``python -m planner_service``, ...)
and configured only through its environment variables, so ``omost serve`` exercises the same code
paths as docker-compose. All children share one process group and die with this process, however
it ends (:mod:`shared.cli.guard`).

The stack never uses a Redis it was not given: on a shared machine the one on 6379 is somebody
else's, and sharing it would mix job records, metrics and work queues of unrelated stacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis

from shared.cli.guard import PARENT_ENV, child_setup
from shared.cli.vllm import VllmMissing, VllmServer, startup_stage
from shared.queue.connect import parse_sentinel_url, sync_client

VLLM_START_TIMEOUT = 900.0
"""vLLM compiles its model on a first start: minutes on a few CPU cores (a GPU's CUDA graphs, less)."""


class StackError(RuntimeError):
    """The stack could not start; the message is one line a user can act on."""


def cache_dir() -> Path:
    """``$OMOST_CACHE_DIR``, else ``$XDG_CACHE_HOME/omost``: state, the private Redis's data, the tiny
    model (the render worker reads the same variable; children inherit it)."""
    explicit = os.environ.get("OMOST_CACHE_DIR")
    root = Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "omost"
    root.mkdir(parents=True, exist_ok=True)
    return root


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """A bare PING over a socket: no client library state, works before any service exists. A Sentinel URL
    is asked through redis-py (the Sentinels name the primary)."""
    if parse_sentinel_url(url) is not None:
        try:
            with sync_client(url, socket_timeout=timeout, socket_connect_timeout=timeout) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=timeout) as sock:
            if parsed.password:
                user = parsed.username or "default"
                sock.sendall(f"AUTH {user} {parsed.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def cuda_device_count() -> int:
    """GPUs visible to torch, without importing torch into this (client) process."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True, text=True, timeout=120, check=True,
        )
        return int(out.stdout.strip() or 0)
    except (subprocess.SubprocessError, ValueError, OSError):
        return 0


@dataclass
class StackConfig:
    host: str = "127.0.0.1"
    planner_port: int = 8000
    render_port: int = 8100
    redis_url: str | None = None
    """None: start a private redis-server on a free port."""
    redis_data: Path | None = None
    """The private Redis's data folder, kept (append-only) across runs; None: a throwaway one."""
    llm_url: str | None = None
    llm_kind: str | None = None
    vllm: VllmServer | None = None
    """A vLLM server to start as a child and plan with (``omost serve --llm vllm``); excludes ``llm_url``."""
    model: str | None = None
    workers: int | None = None
    """None: one per CUDA device, or one on the CPU."""
    planner: bool = True
    render: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


class LocalStack:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.children: list[_Child] = []
        self.redis_url = config.redis_url or ""
        self._process_group: int | None = None
        self._scratch: Path | None = None
        self.log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="omost-stack-"))

    @property
    def planner_url(self) -> str:
        return f"http://{self.config.host}:{self.config.planner_port}"

    @property
    def render_url(self) -> str:
        return f"http://{self.config.host}:{self.config.render_port}"

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 300.0, progress: Callable[[str], None] | None = None) -> None:
        """``progress`` hears what the stack is waiting for (vLLM's start-up stages)."""
        try:
            self._start_redis()
            if self.config.vllm is not None and self.config.planner:
                self._spawn_vllm(self.config.vllm)
            env = self._environment()
            if self.config.render:
                self._spawn("render-api", ["render_service"], env)
                for index, device in enumerate(self._devices()):
                    worker_env = {**env, "OMOST_RENDER_DEVICE": device}
                    self._spawn(f"render-worker-{index}", ["render_service.worker"], worker_env)
            if self.config.vllm is not None and self.config.planner:
                # The planner reads the model's name and window from vLLM as it starts: after vLLM.
                self._wait_vllm(self.config.vllm, progress or (lambda stage: None))
            if self.config.planner:
                self._spawn("planner", ["planner_service"], env)
            if self.config.render:
                self._wait_ready(f"{self.render_url}/readyz", timeout)
            if self.config.planner:
                self._wait_ready(f"{self.planner_url}/readyz", timeout)
        except BaseException:
            self.stop()
            raise

    def _start_redis(self) -> None:
        if self.config.redis_url is not None:
            if not redis_answers(self.config.redis_url, timeout=2.0):
                raise StackError(f"Redis at {self.config.redis_url} does not answer")
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server is not installed: apt-get install redis-server, or pass --redis-url")
        port = free_port()
        if self.config.redis_data is not None:
            data = self.config.redis_data
            data.mkdir(parents=True, exist_ok=True)
            persistence = ["--appendonly", "yes"]  # a job accepted before a restart is still there after it
        else:
            (cache_dir() / "redis").mkdir(exist_ok=True)
            data = self._scratch = Path(tempfile.mkdtemp(prefix="tmp-", dir=cache_dir() / "redis"))
            persistence = ["--appendonly", "no"]
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "", *persistence]
        self._spawn_raw("redis", args, dict(os.environ))
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 20
        while not redis_answers(self.redis_url):
            if time.monotonic() > deadline or self.children[-1].process.poll() is not None:
                raise StackError(f"redis-server did not start; see {self.children[-1].log_path}")
            time.sleep(0.05)

    def _spawn_vllm(self, server: VllmServer) -> None:
        try:
            args = server.args()
        except VllmMissing as exc:
            raise StackError(str(exc)) from None
        self._spawn_raw("vllm", args, server.environment())

    def _wait_vllm(self, server: VllmServer, progress: Callable[[str], None]) -> None:
        (child,) = [c for c in self.children if c.name == "vllm"]
        deadline = time.monotonic() + VLLM_START_TIMEOUT
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise StackError(f"vLLM stopped: {last_error(child.log_path)} (log: {child.log_path})")
            try:
                if httpx.get(server.health_url, timeout=2.0).is_success:
                    progress("vLLM: ready")
                    return
            except httpx.HTTPError:
                pass
            progress(startup_stage(child.log_path.read_text(errors="replace")))
            time.sleep(0.5)
        raise StackError(f"vLLM not ready after {VLLM_START_TIMEOUT:g} s; log: {child.log_path}")

    def _environment(self) -> dict[str, str]:
        c = self.config
        env = {
            # Import-time notices (transformers' "requires torchvision" fallbacks) and download bars
            # are noise in a service log; an explicit setting of the user's still wins.
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            **os.environ,
            "OMOST_REDIS_URL": self.redis_url,
            "OMOST_RENDER_HOST": c.host,
            "OMOST_RENDER_PORT": str(c.render_port),
            "OMOST_RENDER_PUBLIC_URL": self.render_url,
            "OMOST_PLANNER_HOST": c.host,
            "OMOST_PLANNER_PORT": str(c.planner_port),
            "OMOST_PLANNER_RENDER_API_URL": self.render_url,
            **c.extra_env,
        }
        if c.model:
            env["OMOST_RENDER_MODEL"] = c.model
        if c.llm_url:
            env["OMOST_PLANNER_LLM_URL"] = c.llm_url
        if c.llm_kind:
            env["OMOST_PLANNER_LLM_KIND"] = c.llm_kind
        if c.vllm is not None:
            env["OMOST_PLANNER_LLM_URL"] = c.vllm.base_url
            env["OMOST_PLANNER_LLM_KIND"] = "vllm"
            env["OMOST_PLANNER_LLM_MODEL"] = c.vllm.served_model_name
        return env

    def _devices(self) -> list[str]:
        count = self.config.workers
        gpus = cuda_device_count() if count is None or count > 1 else 0
        if gpus:
            return [f"cuda:{i % gpus}" for i in range(count or gpus)]
        return ["auto"] * (count or 1)

    def _spawn(self, name: str, module: list[str], env: dict[str, str]) -> None:
        # Through the guard: where the kernel cannot end children with their parent, it does.
        guarded = {**env, PARENT_ENV: str(os.getpid())}
        self._spawn_raw(name, [sys.executable, "-m", "shared.cli.guard", *module], guarded)

    def _spawn_raw(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            # One process group of our own: Ctrl-C in the terminal reaches only us (we stop the
            # children in order), and one killpg reaches every child and grandchild.
            setup = child_setup(os.getpid(), self._process_group or 0)
            process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=setup)
        if self._process_group is None:
            self._process_group = process.pid
        self.children.append(_Child(name, process, log_path))

    def _wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in self.children:
                if child.process.poll() is not None:
                    raise StackError(
                        f"{child.name} stopped: {last_error(child.log_path)} (log: {child.log_path})"
                    )
            try:
                if httpx.get(url, timeout=2.0).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise StackError(f"{url} not ready after {timeout:g} s; logs in {self.log_dir}")

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM every service at once (workers finish or requeue their job), wait, then stop Redis."""
        services = [c for c in self.children if c.name != "redis"]
        for group in (services, [c for c in self.children if c.name == "redis"]):
            for child in group:
                if child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for child in group:
                try:
                    child.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
        if self._process_group is not None:
            # Grandchildren (uvicorn's worker processes, say) that outlived their parent.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process_group, signal.SIGKILL)
            self._process_group = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        self.children.clear()


def last_error(log_path: Path) -> str:
    """The last error a service logged, as one line: JSON logs' message and fields, else the last line."""
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("ERROR", "CRITICAL"):
            error = entry.get("error") or entry.get("exc", "").strip().splitlines()[-1:] or ""
            return f"{entry.get('msg', 'error')}: {''.join(error)}".rstrip(": ")
    return lines[-1].strip() if lines else "no output"
