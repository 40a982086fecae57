"""Starting the render API and workers as real processes, and talking to them over HTTP."""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from shared.queue import QueueKeys
from shared.queue.connect import sync_client
from tests.support import ChildProcess, StepGate, free_port, python_module, wait_for_http, wait_until

TERMINAL = {"succeeded", "failed", "canceled"}

CANVAS: dict[str, Any] = {
    "global_description": {"description": "a red fox in snow", "HTML_web_color_name": "white"},
    "local_descriptions": [
        {
            "location": "on the left",
            "offset": "slightly to the left",
            "area": "a medium-sized square area",
            "distance_to_viewer": 3.0,
            "description": "a red fox",
            "detailed_descriptions": ["orange fur"],
            "HTML_web_color_name": "orangered",
        }
    ],
}


def body(**overrides: Any) -> dict[str, Any]:
    """A small, fast render request (64x64, 2 steps) unless overridden."""
    return {"canvas": CANVAS, "width": 64, "height": 64, "steps": 2, **overrides}


def unique_prefix(name: str) -> str:
    return f"test-{name}-{uuid.uuid4().hex[:8]}:"


def base_env(redis_url: str, prefix: str, **settings: Any) -> dict[str, str]:
    env = {
        "OMOST_REDIS_URL": redis_url,
        "OMOST_RENDER_KEY_PREFIX": prefix,
        "OMOST_RENDER_LOG_JSON": "true",
        # Several workers share 2 cores in the tests: one thread each avoids oversubscription.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    # A name already in OMOST_ form is a setting without the service prefix (OMOST_REDIS_WAIT_REPLICAS).
    env.update({k if k.startswith("OMOST_") else f"OMOST_RENDER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Api:
    def __init__(self, redis_url: str, prefix: str, log_dir: Path, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = base_env(redis_url, prefix, port=self.port, host="127.0.0.1", **settings)
        self.child = ChildProcess(python_module("render_service"), env=env, log_dir=log_dir)

    def start(self) -> Api:
        self.child.start()
        wait_for_http(f"{self.url}/healthz", timeout=60, process=self.child.process)
        return self

    def stop(self) -> None:
        self.child.stop()


def start_worker(redis_url: str, prefix: str, model: Path, log_dir: Path, name: str, **settings: Any) -> ChildProcess:
    env = base_env(redis_url, prefix, model=model, worker_name=name, **settings)
    return ChildProcess(python_module("render_service.worker"), env=env, log_dir=log_dir).start()


@dataclass
class Stack:
    """A render API and its workers as processes, with what the tests reach them by."""

    redis_url: str
    prefix: str
    model: Path
    log_dir: Path
    api: Api
    http: httpx.Client = field(init=False)
    workers: dict[str, ChildProcess] = field(default_factory=dict)

    @functools.cached_property
    def gate(self) -> StepGate:
        return StepGate(self.log_dir / f"step-gate-{self.prefix.rstrip(':')}")

    @property
    def keys(self) -> QueueKeys:
        return QueueKeys(self.prefix)

    @functools.cached_property
    def redis(self) -> redis.Redis:
        return sync_client(self.redis_url)  # a plain or a Sentinel URL

    def add_worker(self, name: str, **settings: Any) -> ChildProcess:
        """Start one more worker; it is stopped (and its log shown on failure) with the others."""
        worker = start_worker(
            self.redis_url, self.prefix, self.model, self.log_dir, name, test_step_gate=self.gate.folder, **settings
        )
        self.workers[name] = worker
        return worker


@contextlib.contextmanager
def render_stack(
    redis_url: str,
    prefix: str,
    model: Path,
    log_dir: Path,
    workers: dict[str, dict[str, Any]],
    api_settings: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """The API and ``workers`` (name -> settings), with every worker heartbeating; all stopped after.

    A failure (in the setup or in the tests using the stack) prints the workers' logs.
    """
    stack = Stack(redis_url, prefix, model, log_dir, Api(redis_url, prefix, log_dir, **(api_settings or {})))
    try:
        for name, settings in workers.items():
            stack.add_worker(name, **settings)
        stack.api.start()
        with httpx.Client(base_url=stack.api.url, timeout=30, headers=headers) as http:
            stack.http = http
            wait_for_workers(http, len(workers))
            yield stack
    except BaseException:
        for name, worker in stack.workers.items():
            print(f"--- {name}\n{worker.log()[-5000:]}")
        raise
    finally:
        stack.api.stop()
        for worker in stack.workers.values():
            worker.stop()


def wait_for_workers(client: httpx.Client, count: int, timeout: float = 120.0) -> None:
    def ready() -> bool:
        answer = client.get("/readyz")
        return answer.json().get("workers", 0) >= count  # /readyz counts them (details: the admin view)

    wait_until(ready, timeout, 0.3, f"{count} worker(s) heartbeating")


def submit(client: httpx.Client, **overrides: Any) -> str:
    answer = client.post("/v1/renders", json=body(**overrides))
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    answer = client.get(f"/v1/renders/{job_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_for(
    client: httpx.Client, job_id: str, predicate: Any, timeout: float = 120.0, what: str = "", missing_ok: bool = False
) -> dict:
    """Poll the job until ``predicate(record)``; return the record.

    ``missing_ok``: a 404 means "not yet" (a job enqueued with XADD alone has no record until a
    worker takes it).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = client.get(f"/v1/renders/{job_id}")
            # 503: Redis briefly unreachable (restart tests); the API says so and we ask again.
            if answer.status_code != 503 and not (missing_ok and answer.status_code == 404):
                assert answer.status_code == 200, answer.text
                record = answer.json()
                if predicate(record):
                    return record
        except httpx.TransportError:
            pass  # the API may be briefly unreachable in restart tests
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: {what or 'condition'} not reached in {timeout} s")
        time.sleep(0.1)


def wait_terminal(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    return wait_for(client, job_id, lambda r: r["status"] in TERMINAL, timeout, "terminal status")
