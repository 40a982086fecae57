"""The tests' own redis-server (AOF on) restarted mid-run: accepted jobs still complete."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.render_service.helpers import StepGate, body, render_stack, submit, unique_prefix, wait_for, wait_terminal
from tests.support import ChildProcess, RedisServer, wait_until

# Real worker processes (torch, model load): seconds to tens of seconds.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("restart-logs")
    server = RedisServer(persistent=True).start()
    settings = {"claim_idle_seconds": 4, "heartbeat_seconds": 0.5, "block_seconds": 0.5}
    try:
        workers = {"restart-worker": settings}
        with render_stack(server.url, unique_prefix("restart"), tiny_model, logs, workers, settings) as stack:
            yield {"http": stack.http, "server": server, "worker": stack.workers["restart-worker"], "gate": stack.gate}
    finally:
        server.stop()


def test_jobs_complete_across_a_redis_restart(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    server: RedisServer = env["server"]
    worker: ChildProcess = env["worker"]
    gate: StepGate = env["gate"]
    with gate.holding_all():  # the first job is held mid-render through the outage
        ids = [submit(http, steps=4)] + [submit(http, seed=n) for n in range(5)]
        wait_for(http, ids[0], lambda r: r["status"] == "running" and r["progress"]["step"] >= 1, 120, "rendering")

        server.stop()
        # While Redis is down the API says so with 503 + Retry-After, never a 500 or a false 202.
        answer = http.post("/v1/renders", json=body())
        assert answer.status_code == 503 and int(answer.headers["Retry-After"]) > 0, answer.text
        assert http.get(f"/v1/renders/{ids[0]}").status_code == 503
        time.sleep(2.0)  # an outage long enough for heartbeats and progress writes to fail
        server.start()

    ids.append(submit(http))
    records = [wait_terminal(http, job_id, 240) for job_id in ids]
    assert [r["status"] for r in records] == ["succeeded"] * len(ids), [r["error"] for r in records]
    assert worker.process is not None and worker.process.poll() is None, "the worker crashed on the outage"
    assert "heartbeat failed" in worker.log(), "the outage hit the held render"


def test_the_worker_goes_on_after_redis_lost_its_data(env: dict[str, Any]) -> None:
    """A Redis that comes back without its dataset (no persistence, a failover to an empty node, a
    FLUSHALL by hand): the job it held is gone with the data, but the worker keeps its process, makes its
    consumer group again and renders the jobs submitted afterwards."""
    http: httpx.Client = env["http"]
    server: RedisServer = env["server"]
    worker: ChildProcess = env["worker"]
    gate: StepGate = env["gate"]
    with gate.holding_all():
        held = submit(http, steps=4)
        wait_for(http, held, lambda r: r["status"] == "running" and r["progress"]["step"] >= 1, 120, "rendering")
        with redis.Redis(port=server.port) as client:
            client.flushall()
        time.sleep(2.0)  # heartbeats (which keep the held entry claimed) meet the missing group meanwhile

    accepted: list[str] = []

    def submitted() -> bool:  # the model registry comes back with the worker's next heartbeat
        answer = http.post("/v1/renders", json=body(seed=7))
        if answer.status_code == 202:
            accepted.append(answer.json()["id"])
        return bool(accepted)

    wait_until(submitted, 30, 0.5, "a submit accepted after the data loss")
    record = wait_terminal(http, accepted[0], 240)
    assert record["status"] == "succeeded", record["error"]
    assert worker.process is not None and worker.process.poll() is None, "the worker exited on the lost data"
    assert "heartbeat crashed" not in worker.log(), "a heartbeat met the missing group as a crash"
