"""A per-job wall-clock limit (``OMOST_RENDER_MAX_JOB_SECONDS``): a job over it fails, saying why."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.render_service.helpers import Stack, render_stack, submit, unique_prefix, wait_terminal
from tests.support import RedisServer

LIMIT_SECONDS = 2.0

# Real worker processes (torch, model load): seconds to tens of seconds.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("limit-logs")
    workers = {"limit-worker": {"max_job_seconds": LIMIT_SECONDS}}
    with render_stack(redis_server.url, unique_prefix("limit"), tiny_model, logs, workers) as stack:
        yield stack


def test_a_job_over_the_time_limit_fails_with_the_reason(stack: Stack) -> None:
    http = stack.http
    with stack.gate.holding_all():  # held between two steps until the limit stops it
        record = wait_terminal(http, submit(http, steps=4), 120)
    assert record["status"] == "failed", record
    assert f"over the per-job time limit of {LIMIT_SECONDS} s" in record["error"]
    assert record["progress"]["step"] < 4, "stopped, not run to the end"


def test_a_job_within_the_limit_succeeds(stack: Stack) -> None:
    assert wait_terminal(stack.http, submit(stack.http))["status"] == "succeeded"
