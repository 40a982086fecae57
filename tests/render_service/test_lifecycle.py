"""One API and one worker as real processes: the whole life of a job, events, webhooks, cancel."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import connect_sse
from PIL import Image

from render_service.worker.webhooks import sign
from shared.jobs import RenderRequest
from shared.queue import (
    GROUP,
    QueueKeys,
    QueueMessage,
    decode_hash,
    encode_message,
    initial_record,
    new_job_id,
)
from tests.render_service.helpers import (
    CANVAS,
    Api,
    body,
    start_worker,
    submit,
    unique_prefix,
    wait_for,
    wait_for_workers,
    wait_terminal,
)
from tests.support import ChildProcess, RedisServer

WEBHOOK_SECRET = "hook-secret"

# Real worker processes (torch, model load): seconds to tens of seconds.
pytestmark = pytest.mark.slow


class Receiver:
    """A local webhook endpoint that fails its first call, to exercise the worker's retries."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.failures_left = 1
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failures_left > 0:
                    receiver.failures_left -= 1
                    self.send_response(503)
                else:
                    receiver.calls.append((dict(self.headers), data))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("lifecycle-logs")
    prefix = unique_prefix("life")
    settings = {"allow_private_webhooks": "true", "webhook_secret": WEBHOOK_SECRET}
    worker = start_worker(redis_server.url, prefix, tiny_model, logs, "life-worker", **settings)
    api = Api(redis_server.url, prefix, logs, **settings).start()
    receiver = Receiver()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            wait_for_workers(http, 1)
            yield {
                "http": http,
                "api": api,
                "worker": worker,
                "keys": QueueKeys(prefix),
                "redis": redis.Redis.from_url(redis_server.url),
                "receiver": receiver,
            }
    except BaseException:
        print(worker.log()[-5000:])
        raise
    finally:
        receiver.server.shutdown()
        api.stop()
        worker.stop()


def sse_events(http: httpx.Client, job_id: str, **headers: str) -> list[tuple[str, str, dict]]:
    with connect_sse(http, "GET", f"/v1/renders/{job_id}/events", headers=headers) as source:
        return [(e.id, e.event, json.loads(e.data)) for e in source.iter_sse()]


def test_full_lifecycle(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    answer = http.post("/v1/renders", json=body(num_images=2, seed=42, steps=3))
    assert answer.status_code == 202
    accepted = answer.json()
    job_id = accepted["id"]
    assert accepted["status"] == "queued"
    assert accepted["urls"]["self"] == answer.headers["location"]
    assert accepted["urls"]["self"].endswith(f"/v1/renders/{job_id}")
    assert accepted["urls"]["events"].endswith(f"/v1/renders/{job_id}/events")

    live = sse_events(http, job_id)  # subscribes right away and follows the job to its end
    names = [name for _, name, _ in live]
    assert names[0] == "queued" and names[1] == "running" and names[-1] == "succeeded"
    progress = [data for _, name, data in live if name == "progress"]
    assert [p["step"] for p in progress] == list(range(1, progress[-1]["total"] + 1))

    record = wait_terminal(http, job_id)
    assert record["status"] == "succeeded", record
    assert record["seeds"] == [42, 43]
    assert record["progress"]["step"] == record["progress"]["total"] > 0
    assert record["model"] and record["device"] == "cpu" and record["worker"] == "life-worker"
    assert record["timings"]["worker_total"] > 0 and record["deliveries"] == 1
    assert record["finished_at"] >= record["started_at"] >= record["created_at"]
    assert len(record["urls"]["images"]) == 2
    for url in record["urls"]["images"]:
        image = http.get(url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (64, 64)
    assert http.get(f"/v1/renders/{job_id}/images/2").status_code == 404

    # A late subscriber gets the same history, and Last-Event-ID resumes without repeats.
    late = sse_events(http, job_id)
    assert late == live
    resumed = sse_events(http, job_id, **{"Last-Event-ID": live[1][0]})
    assert resumed == live[2:]
    started = time.monotonic()
    assert sse_events(http, job_id, **{"Last-Event-ID": live[-1][0]}) == []
    assert time.monotonic() - started < 2  # nothing left to wait for: the stream closes at once

    # Results and records carry the TTL.
    keys: QueueKeys = env["keys"]
    r: redis.Redis = env["redis"]
    for key in (keys.job(job_id), keys.events(job_id), keys.image(job_id, 0)):
        assert 0 < r.ttl(key) <= 24 * 3600

    metrics = http.get("/metrics").text
    assert 'omost_render_jobs_finished_total{status="succeeded"}' in metrics
    assert "omost_render_duration_seconds_count" in metrics
    assert "omost_render_step_seconds_bucket" in metrics and "omost_render_queue_depth" in metrics
    step_count = next(line for line in metrics.splitlines() if line.startswith("omost_render_step_seconds_count"))
    assert float(step_count.split()[-1]) >= 3
    assert "/v1/renders/{job_id}/events" in http.get("/openapi.json").json()["paths"]
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] == 1 and "life-worker" not in ready.text


def test_idempotency_key(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    headers = {"Idempotency-Key": f"order-{time.monotonic_ns()}"}
    first = http.post("/v1/renders", json=body(seed=7), headers=headers)
    second = http.post("/v1/renders", json=body(seed=7), headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    conflict = http.post("/v1/renders", json=body(seed=8), headers=headers)
    assert conflict.status_code == 409 and "different request body" in conflict.json()["detail"]
    assert wait_terminal(http, first.json()["id"])["status"] == "succeeded"


def test_webhook_called_with_retries(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    receiver: Receiver = env["receiver"]
    job_id = submit(http, webhook_url=receiver.url)
    assert wait_terminal(http, job_id)["status"] == "succeeded"
    record = wait_for(http, job_id, lambda r: r["webhook"] is not None, 60, "webhook outcome")
    assert record["webhook"].startswith("delivered: HTTP 204 after 2 attempt"), record["webhook"]
    headers, data = receiver.calls[-1]
    payload = json.loads(data)
    assert payload["id"] == job_id and payload["status"] == "succeeded" and len(payload["urls"]["images"]) == 1
    assert headers["X-Omost-Event"] == "render.succeeded"
    assert headers["X-Omost-Signature"] == sign(data, WEBHOOK_SECRET)


def test_cancel_queued_and_running(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    long_id = submit(http, steps=150)
    wait_for(http, long_id, lambda r: r["status"] == "running" and r["progress"]["step"] >= 1, 120, "rendering")
    queued_id = submit(http, webhook_url=env["receiver"].url)  # waits behind the long job

    answer = http.delete(f"/v1/renders/{queued_id}")
    assert answer.status_code == 202 and answer.json()["status"] == "canceled"
    answer = http.delete(f"/v1/renders/{long_id}")
    assert answer.status_code == 202
    assert answer.json()["status"] == "running" and answer.json()["cancel_requested"] is True

    record = wait_terminal(http, long_id, 60)
    assert record["status"] == "canceled" and record["progress"]["step"] < 150
    assert http.get(f"/v1/renders/{long_id}/images/0").status_code == 409
    assert http.delete(f"/v1/renders/{long_id}").status_code == 409
    assert [name for _, name, _ in sse_events(http, queued_id)] == ["queued", "canceled"]

    # The worker skips the canceled entry (and reports it by webhook), then carries on.
    wait_for(http, queued_id, lambda r: r["webhook"] is not None, 60, "webhook of the canceled job")
    assert wait_terminal(http, submit(http))["status"] == "succeeded"
    keys: QueueKeys = env["keys"]
    wait_for(http, long_id, lambda _: env["redis"].xlen(keys.stream) == 0, 30, "stream drained")


def test_plain_redis_enqueue(env: dict[str, Any]) -> None:
    """docs/queue-protocol.md: a client with only a Redis library can queue a job."""
    http: httpx.Client = env["http"]
    r: redis.Redis = env["redis"]
    keys: QueueKeys = env["keys"]
    # Minimal form: XADD the message alone; the worker creates the record.
    job_id = new_job_id()
    message = {"v": 1, "job_id": job_id, "request": {"canvas": CANVAS, "width": 64, "height": 64, "steps": 2}}
    r.xadd(keys.stream, {"message": json.dumps(message)})
    record = wait_for(http, job_id, lambda rec: rec["status"] == "succeeded", 120, "succeeded", missing_ok=True)
    assert record["request"]["steps"] == 2
    assert [name for _, name, _ in sse_events(http, job_id) if name != "progress"] == ["queued", "running", "succeeded"]

    # Full form: record + first event + message in one MULTI/EXEC, so GET works at once.
    msg = QueueMessage(job_id=new_job_id(), request=RenderRequest.model_validate(body()), ttl_seconds=600)
    with r.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job(msg.job_id), mapping=initial_record(msg))
        pipe.expire(keys.job(msg.job_id), 600)
        pipe.xadd(keys.events(msg.job_id), {"event": json.dumps({"type": "status", "status": "queued", "at": 1.0})})
        pipe.xadd(keys.stream, encode_message(msg))
        pipe.execute()
    assert wait_terminal(http, msg.job_id)["status"] == "succeeded"


def test_dead_letters(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    r: redis.Redis = env["redis"]
    keys: QueueKeys = env["keys"]
    r.xadd(keys.stream, {"message": "{not json"})
    # A job whose record says it was already delivered max_deliveries (3) times fails, not renders.
    msg = QueueMessage(job_id=new_job_id(), request=RenderRequest.model_validate(body()), ttl_seconds=600)
    with r.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job(msg.job_id), mapping={**initial_record(msg), "deliveries": "3"})
        pipe.xadd(keys.stream, encode_message(msg))
        pipe.execute()
    record = wait_terminal(http, msg.job_id)
    assert record["status"] == "failed" and "gave up after 3 deliveries" in record["error"]
    dead = [decode_hash(fields) for _, fields in r.xrange(keys.dead_letter)]
    assert any(d["reason"].startswith("malformed message") for d in dead)
    assert any(d.get("job_id") == msg.job_id for d in dead)
    assert r.xpending(keys.stream, GROUP)["pending"] == 0


def test_worker_stays_healthy(env: dict[str, Any]) -> None:
    worker: ChildProcess = env["worker"]
    assert worker.process is not None and worker.process.poll() is None
    assert "Traceback" not in worker.log()
