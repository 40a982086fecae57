"""Three workers as real processes: exactly-once delivery, heartbeats, SIGTERM and SIGKILL.

The tests run in order and share the workers: the race uses all three, the SIGTERM test stops one
and the SIGKILL test kills another, whose job the last one must finish. Claim deadlines are short
(2 s, heartbeat every 0.25 s) so that reclaiming takes seconds and heartbeats are put to work. The
processes export OpenTelemetry traces to a receiver in the test: a reclaimed run is a second span,
linked to the first.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from shared.queue import GROUP, QueueKeys
from tests.otlp_receiver import OtlpReceiver
from tests.render_service.helpers import (
    StepGate,
    body,
    render_stack,
    submit,
    unique_prefix,
    wait_for,
    wait_terminal,
)
from tests.support import ChildProcess, RedisServer, wait_until

CLAIM_IDLE_SECONDS = 2.0
SETTINGS = {
    "claim_idle_seconds": CLAIM_IDLE_SECONDS,
    "heartbeat_seconds": 0.25,
    "shutdown_grace_seconds": 0.5,
    "block_seconds": 0.5,
}

# Real worker processes (torch, model load): seconds to tens of seconds.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("workers-logs")
    workers = {name: SETTINGS for name in ("w1", "w2", "w3")}
    with OtlpReceiver() as otlp, contextlib.ExitStack() as running:
        with pytest.MonkeyPatch.context() as patch:  # only the children started now see it
            patch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url)
            patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
            stack = running.enter_context(
                render_stack(redis_server.url, unique_prefix("workers"), tiny_model, logs, workers, SETTINGS)
            )
        yield {
            "http": stack.http,
            "workers": stack.workers,
            "keys": stack.keys,
            "redis": stack.redis,
            "gate": stack.gate,
            "otlp": otlp,
        }


def statuses(r: redis.Redis, keys: QueueKeys, job_id: str) -> list[str]:
    """The status events of a job, in order (progress events left out)."""
    events = [json.loads(fields[b"event"]) for _, fields in r.xrange(keys.events(job_id))]
    return [e["status"] for e in events if e["type"] == "status"]


def test_three_workers_race_over_30_jobs(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    gate: StepGate = env["gate"]
    # One job is held past the claim deadline several times over: only heartbeats keep it from being stolen.
    with gate.holding_all():
        long_id = submit(http, steps=4, num_images=2)
        running_on(http, long_id)
        gate.hold(long_id)
    held_since = time.monotonic()
    try:
        ids = [long_id] + [submit(http, seed=n) for n in range(29)]
        records = [wait_terminal(http, job_id, 240) for job_id in ids[1:]]
        time.sleep(max(0.0, held_since + 2 * CLAIM_IDLE_SECONDS - time.monotonic()))
        assert wait_for(http, long_id, lambda r: True)["status"] == "running"
    finally:
        gate.release(long_id)
    records.insert(0, wait_terminal(http, long_id, 240))

    assert all(r["status"] == "succeeded" for r in records), [r["error"] for r in records]
    assert all(r["deliveries"] == 1 for r in records), "a job was delivered twice"
    for job_id in ids:  # rendered exactly once: one "running", one "succeeded"
        assert statuses(env["redis"], env["keys"], job_id) == ["queued", "running", "succeeded"]
    assert {r["worker"] for r in records} == {"w1", "w2", "w3"}
    assert records[0]["timings"]["worker_total"] > 2 * CLAIM_IDLE_SECONDS
    r: redis.Redis = env["redis"]
    assert r.xlen(env["keys"].stream) == 0 and r.xpending(env["keys"].stream, GROUP)["pending"] == 0


def running_on(http: httpx.Client, job_id: str) -> str:
    record = wait_for(http, job_id, lambda r: r["status"] == "running" and r["progress"]["step"] >= 1, 120, "rendering")
    return record["worker"]


def test_sigterm_requeues_the_running_job(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    workers: dict[str, ChildProcess] = env["workers"]
    with env["gate"].holding_all():
        job_id = submit(http, steps=4)
        name = running_on(http, job_id)
        process = workers[name].process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        # Held, it can't finish within the 0.5 s grace: it requeues the job and exits cleanly.
        assert process.wait(60) == 0
    record = wait_terminal(http, job_id, 240)
    assert record["status"] == "succeeded" and record["worker"] != name
    assert record["deliveries"] == 1  # a shutdown is not held against the job
    assert statuses(env["redis"], env["keys"], job_id) == ["queued", "running", "queued", "running", "succeeded"]


def test_sigkill_mid_render_is_finished_by_another(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    workers: dict[str, ChildProcess] = env["workers"]
    otlp: OtlpReceiver = env["otlp"]
    alive = [n for n, w in workers.items() if w.process is not None and w.process.poll() is None]
    assert len(alive) == 2
    trace_id = secrets.token_hex(16)
    with env["gate"].holding_all():
        answer = http.post("/v1/renders", json=body(steps=4), headers={"traceparent": f"00-{trace_id}-{'1' * 16}-01"})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        name = running_on(http, job_id)
        # The first run's claim span is exported (its own span never will be: the run dies).
        wait_until(lambda: any(s.name == "claim" for s in otlp.trace(trace_id)), 60, 0.1, "the first claim exported")
        workers[name].kill()
    # The dead worker's entry idles past the deadline; the survivor reclaims and renders it.
    record = wait_terminal(http, job_id, 240)
    assert record["status"] == "succeeded" and record["worker"] != name
    assert record["deliveries"] == 2
    assert statuses(env["redis"], env["keys"], job_id) == ["queued", "running", "running", "succeeded"]
    r: redis.Redis = env["redis"]
    assert r.xpending(env["keys"].stream, GROUP)["pending"] == 0
    # Both runs are children of the submit span; the second is linked to the first.
    wait_until(lambda: any(s.name == "render job" for s in otlp.trace(trace_id)), 60, 0.1, "the second run exported")
    spans = otlp.trace(trace_id)
    (submitted,) = [s for s in spans if s.name == "render submit"]
    (second,) = [s for s in spans if s.name == "render job"]
    assert second.attributes["omost.job.delivery"] == 2 and second.parent_id == submitted.span_id
    runs = {s.parent_id for s in spans if s.name == "claim"}  # each claim is a child of its run's span
    assert second.span_id in runs and len(runs) == 2
    (first_run,) = runs - {second.span_id}
    assert second.links == [first_run]


def test_superseded_worker_stops_and_the_job_is_redelivered(env: dict[str, Any]) -> None:
    """A worker that finds another delivery owns its job (it was cut off past the deadline) stops
    rendering and leaves the result to that delivery; here nobody else took it, so the entry idles
    past the deadline and is reclaimed and finished."""
    http: httpx.Client = env["http"]
    r: redis.Redis = env["redis"]
    with env["gate"].holding_all():
        job_id = submit(http, steps=4)
        name = running_on(http, job_id)
        r.hset(env["keys"].job(job_id), "owner", "someone-else/0000")
        wait_until(lambda: "stopped rendering it" in env["workers"][name].log(), 60, 0.1, "the superseded run stopped")
    record = wait_terminal(http, job_id, 240)
    assert record["status"] == "succeeded" and record["deliveries"] == 2
    assert "stopped rendering it" in env["workers"][name].log()
