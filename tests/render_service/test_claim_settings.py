"""Workers with different claim settings: none reclaims a job whose owner is still beating.

The owner heartbeats every 3 s (claim deadline 6 s); the other worker's own deadline is 1 s. Its
entry's idle time passes 1 s between heartbeats over and over, yet the owner publishes that it is
beating for this entry within *its* deadline, so the other worker must leave it alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from shared.queue import QueueKeys
from tests.render_service.helpers import (
    Api,
    start_worker,
    submit,
    unique_prefix,
    wait_for,
    wait_for_workers,
    wait_terminal,
)
from tests.support import RedisServer

SLOW = {"claim_idle_seconds": 6.0, "heartbeat_seconds": 3.0, "block_seconds": 0.5}
FAST = {"claim_idle_seconds": 1.0, "heartbeat_seconds": 0.25, "block_seconds": 0.5}

# Real worker processes (torch, model load): seconds to tens of seconds.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("claim-logs")
    prefix = unique_prefix("claim")
    api = Api(redis_server.url, prefix, logs, **SLOW).start()
    slow = start_worker(redis_server.url, prefix, tiny_model, logs, "slow-beat", **SLOW)
    workers = [slow]
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            wait_for_workers(http, 1)
            yield {
                "http": http,
                "start_fast": lambda: workers.append(
                    start_worker(redis_server.url, prefix, tiny_model, logs, "fast-claim", **FAST)
                ),
                "keys": QueueKeys(prefix),
                "redis": redis.Redis.from_url(redis_server.url),
            }
    except BaseException:
        for worker in workers:
            print(worker.log()[-3000:])
        raise
    finally:
        api.stop()
        for worker in workers:
            worker.stop()


def test_a_short_claim_deadline_does_not_steal_a_beating_owners_job(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    # Long enough to outlast the second worker's start and many of its 1 s deadlines.
    job_id = submit(http, steps=150, num_images=4, width=128, height=128)
    wait_for(http, job_id, lambda r: r["status"] == "running" and r["worker"] == "slow-beat", 120, "running")
    env["start_fast"]()
    wait_for_workers(http, 2)
    time.sleep(4 * FAST["claim_idle_seconds"] + SLOW["heartbeat_seconds"])  # the fast worker had its chances

    record = wait_for(http, job_id, lambda r: True)
    assert record["worker"] == "slow-beat" and record["deliveries"] == 1, record
    if record["status"] == "running":  # no need to wait for the end: stop it
        http.delete(f"/v1/renders/{job_id}")
    record = wait_terminal(http, job_id, 120)
    assert record["worker"] == "slow-beat" and record["deliveries"] == 1, record
    events = [json.loads(f[b"event"]) for _, f in env["redis"].xrange(env["keys"].events(job_id))]
    assert [e["status"] for e in events if e["type"] == "status"].count("running") == 1
