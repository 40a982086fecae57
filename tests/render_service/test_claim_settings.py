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

from tests.render_service.helpers import render_stack, submit, unique_prefix, wait_for, wait_for_workers, wait_terminal
from tests.support import RedisServer

SLOW = {"claim_idle_seconds": 6.0, "heartbeat_seconds": 3.0, "block_seconds": 0.5}
FAST = {"claim_idle_seconds": 1.0, "heartbeat_seconds": 0.25, "block_seconds": 0.5}

# Real worker processes (torch, model load): seconds to tens of seconds.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("claim-logs")
    prefix = unique_prefix("claim")
    with render_stack(redis_server.url, prefix, tiny_model, logs, {"slow-beat": SLOW}, SLOW) as stack:
        yield {
            "http": stack.http,
            "start_fast": lambda: stack.add_worker("fast-claim", **FAST),
            "keys": stack.keys,
            "redis": stack.redis,
            "gate": stack.gate,
        }


def test_a_short_claim_deadline_does_not_steal_a_beating_owners_job(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    # Held between two steps, the job outlasts the second worker's start and many of its 1 s deadlines.
    with env["gate"].holding_all():
        job_id = submit(http, steps=4)
        wait_for(http, job_id, lambda r: r["status"] == "running" and r["progress"]["step"] >= 1, 120, "running")
        assert wait_for(http, job_id, lambda r: True)["worker"] == "slow-beat"
        env["start_fast"]()
        wait_for_workers(http, 2)
        time.sleep(4 * FAST["claim_idle_seconds"] + SLOW["heartbeat_seconds"])  # the fast worker had its chances

        record = wait_for(http, job_id, lambda r: True)
        assert record["status"] == "running", record
        assert record["worker"] == "slow-beat" and record["deliveries"] == 1, record
        assert http.delete(f"/v1/renders/{job_id}").status_code == 202  # no need to wait for the end
        record = wait_terminal(http, job_id, 120)
    assert record["status"] == "canceled" and record["worker"] == "slow-beat" and record["deliveries"] == 1, record
    events = [json.loads(f[b"event"]) for _, f in env["redis"].xrange(env["keys"].events(job_id))]
    assert [e["status"] for e in events if e["type"] == "status"].count("running") == 1
