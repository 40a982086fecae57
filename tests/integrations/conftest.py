"""The real stack for the integration tests, started once: a private redis-server, the planner with
the embedded SmolLM2 (llama.cpp), the render API and one worker with the tiny random-weight model,
each its own process, all behind one bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.cli.stack import LocalStack, StackConfig, free_port
from tests.support import RedisServer

TOKEN = "integration-test-token"
# SmolLM2 on two shared cores: bound each plan so a test takes seconds, not minutes.
PLAN_TOKENS = "350"


@pytest.fixture(scope="session")
def stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    redis = RedisServer().start()
    env = {
        "OMOST_PLANNER_API_TOKEN": TOKEN,
        "OMOST_RENDER_API_TOKEN": TOKEN,
        "OMOST_PLANNER_KEY_PREFIX": "integrations:",
        "OMOST_RENDER_KEY_PREFIX": "integrations:",
        "OMOST_PLANNER_MAX_NEW_TOKENS": PLAN_TOKENS,
        "OMOST_PLANNER_PLAYGROUND": "false",
        # What --tiny sets for "auto": a size the tiny model renders in about a second on a CPU.
        "OMOST_PLANNER_IMAGES_DEFAULT_SIZE": "64x64",
        "OMOST_PLANNER_IMAGES_STEPS": "3",
        "OMOST_PLANNER_IMAGES_TIMEOUT_SECONDS": "300",
    }
    config = StackConfig(
        planner_port=free_port(), render_port=free_port(), redis_url=redis.url, model=str(tiny_model), workers=1,
        extra_env=env, log_dir=tmp_path_factory.mktemp("stack-logs"),
    )
    running = LocalStack(config)
    try:
        running.start(timeout=300)
        yield running
    finally:
        running.stop()
        redis.stop()
