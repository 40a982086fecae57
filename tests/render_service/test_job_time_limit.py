"""A per-job wall-clock limit (``OMOST_RENDER_MAX_JOB_SECONDS``): a job over it fails, saying why."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.render_service.helpers import Api, start_worker, submit, unique_prefix, wait_for_workers, wait_terminal
from tests.support import RedisServer

LIMIT_SECONDS = 2.0

# Real worker processes (torch, model load): seconds to tens of seconds.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http(redis_server: RedisServer, tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    logs = tmp_path_factory.mktemp("limit-logs")
    prefix = unique_prefix("limit")
    worker = start_worker(redis_server.url, prefix, tiny_model, logs, "limit-worker", max_job_seconds=LIMIT_SECONDS)
    api = Api(redis_server.url, prefix, logs).start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            wait_for_workers(client, 1)
            yield client
    except BaseException:
        print(worker.log()[-5000:])
        raise
    finally:
        api.stop()
        worker.stop()


def test_a_job_over_the_time_limit_fails_with_the_reason(http: httpx.Client) -> None:
    record = wait_terminal(http, submit(http, steps=150, num_images=4, width=128, height=128), 120)
    assert record["status"] == "failed", record
    assert f"over the per-job time limit of {LIMIT_SECONDS} s" in record["error"]
    assert record["finished_at"] - record["started_at"] < LIMIT_SECONDS + 10  # stopped, not run to the end


def test_a_job_within_the_limit_succeeds(http: httpx.Client) -> None:
    assert wait_terminal(http, submit(http))["status"] == "succeeded"
