"""One API and one worker as real processes: the whole life of a job, events, webhooks, cancel."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import connect_sse
from PIL import Image

from render_service.webhooks import sign
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
    StepGate,
    body,
    render_stack,
    submit,
    unique_prefix,
    wait_for,
    wait_terminal,
)
from tests.support import ChildProcess, RedisServer, wait_until

WEBHOOK_SECRET = "hook-secret"

# Real worker processes (torch, model load): seconds to tens of seconds.
pytestmark = pytest.mark.slow


class Receiver:
    """A local webhook endpoint that fails its first call, to exercise the worker's retries."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.attempts: list[dict[str, str]] = []
        """The headers of every POST, answered 2xx or not."""
        self.failures_left = 1
        self.on_failure: Callable[[], None] | None = None
        """Called before a failure is answered (the test kills the sending worker there)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts.append(dict(self.headers))
                if receiver.failures_left > 0:
                    if receiver.on_failure is not None:
                        receiver.on_failure()
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


@dataclass
class Stack:
    """One API and one worker as processes, with what the tests reach them by."""

    http: httpx.Client
    api: Api
    worker: ChildProcess
    keys: QueueKeys
    redis: redis.Redis
    receiver: Receiver
    gate: StepGate
    add_worker: Callable[..., ChildProcess]


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("lifecycle-logs")
    settings = {
        "allow_private_webhooks": "true",
        "webhook_secret": WEBHOOK_SECRET,
        # A delivery is retried 3 s (3 x the timeout) after an attempt that failed or whose worker died.
        "webhook_timeout_seconds": 1,
        "webhook_retry_seconds": 0.5,
    }
    receiver = Receiver()
    try:
        # This worker attends through the packed path (the others in the suite use the default SDPA
        # path), so a real worker process renders it end to end too.
        workers = {"life-worker": {**settings, "attention": "packed"}}
        with render_stack(redis_server.url, unique_prefix("life"), tiny_model, logs, workers, settings) as stack:
            worker = stack.workers["life-worker"]
            yield Stack(
                stack.http, stack.api, worker, stack.keys, stack.redis, receiver, stack.gate,
                lambda name: stack.add_worker(name, **{**settings, "attention": "packed"}),
            )  # fmt: skip
    finally:
        receiver.server.shutdown()


def sse_events(http: httpx.Client, job_id: str, **headers: str) -> list[tuple[str, str, dict]]:
    with connect_sse(http, "GET", f"/v1/renders/{job_id}/events", headers=headers) as source:
        return [(e.id, e.event, json.loads(e.data)) for e in source.iter_sse()]


@dataclass
class FinishedJob:
    """A job of 2 images (seed 42, 3 steps) followed from submit to success; the claims below read it."""

    answer: httpx.Response
    job_id: str
    live: list[tuple[str, str, dict]]
    """Its events as a subscriber that connected right after the submit saw them."""
    record: dict[str, Any]


@pytest.fixture(scope="module")
def finished(env: Stack) -> FinishedJob:
    answer = env.http.post("/v1/renders", json=body(num_images=2, seed=42, steps=3))
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    live = sse_events(env.http, job_id)  # subscribes right away and follows the job to its end
    return FinishedJob(answer, job_id, live, wait_terminal(env.http, job_id))


def test_submit_answers_queued_with_its_urls(finished: FinishedJob) -> None:
    accepted, job_id = finished.answer.json(), finished.job_id
    assert accepted["status"] == "queued"
    assert accepted["urls"]["self"] == finished.answer.headers["location"]
    assert accepted["urls"]["self"].endswith(f"/v1/renders/{job_id}")
    assert accepted["urls"]["events"].endswith(f"/v1/renders/{job_id}/events")


def test_events_run_from_queued_through_running_to_succeeded(finished: FinishedJob) -> None:
    names = [name for _, name, _ in finished.live]
    assert names[0] == "queued" and names[1] == "running" and names[-1] == "succeeded"


def test_progress_events_count_every_step(finished: FinishedJob) -> None:
    progress = [data for _, name, data in finished.live if name == "progress"]
    assert [p["step"] for p in progress] == list(range(1, progress[-1]["total"] + 1))


def test_the_job_succeeds_with_one_seed_per_image(finished: FinishedJob) -> None:
    assert finished.record["status"] == "succeeded", finished.record
    assert finished.record["seeds"] == [42, 43]


def test_the_record_says_who_rendered_it_and_how(finished: FinishedJob) -> None:
    record = finished.record
    assert record["progress"]["step"] == record["progress"]["total"] > 0
    assert record["model"] and record["device"] == "cpu" and record["worker"] == "life-worker"
    assert record["timings"]["worker_total"] > 0 and record["deliveries"] == 1


def test_timestamps_are_in_order(finished: FinishedJob) -> None:
    record = finished.record
    assert record["finished_at"] >= record["started_at"] >= record["created_at"]


def test_each_image_is_a_png_of_the_requested_size(env: Stack, finished: FinishedJob) -> None:
    assert len(finished.record["urls"]["images"]) == 2
    for url in finished.record["urls"]["images"]:
        image = env.http.get(url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (64, 64)
    assert env.http.get(f"/v1/renders/{finished.job_id}/images/2").status_code == 404


def test_a_late_subscriber_gets_the_same_history(env: Stack, finished: FinishedJob) -> None:
    assert sse_events(env.http, finished.job_id) == finished.live


def test_last_event_id_resumes_without_repeats(env: Stack, finished: FinishedJob) -> None:
    live = finished.live
    assert sse_events(env.http, finished.job_id, **{"Last-Event-ID": live[1][0]}) == live[2:]


def test_a_stream_resumed_after_the_end_closes_at_once(env: Stack, finished: FinishedJob) -> None:
    started = time.monotonic()
    assert sse_events(env.http, finished.job_id, **{"Last-Event-ID": finished.live[-1][0]}) == []
    assert time.monotonic() - started < 2  # nothing left to wait for


def test_record_events_and_images_expire(env: Stack, finished: FinishedJob) -> None:
    keys, job_id = env.keys, finished.job_id
    for key in (keys.job(job_id), keys.events(job_id), keys.image(job_id, 0)):
        assert 0 < env.redis.ttl(key) <= 24 * 3600


def test_metrics_count_the_job_and_its_steps(env: Stack, finished: FinishedJob) -> None:
    metrics = env.http.get("/metrics").text
    assert 'omost_render_jobs_finished_total{status="succeeded"}' in metrics
    assert "omost_render_duration_seconds_count" in metrics
    assert "omost_render_step_seconds_bucket" in metrics and "omost_render_queue_depth" in metrics
    step_count = next(line for line in metrics.splitlines() if line.startswith("omost_render_step_seconds_count"))
    assert float(step_count.split()[-1]) >= 3
    values = {line.split()[0]: float(line.split()[-1]) for line in metrics.splitlines() if not line.startswith("#")}
    assert values["omost_render_queue_wait_seconds_count"] >= 1
    assert values["omost_render_busy_seconds_total"] > 0
    for phase in ("encode", "denoise", "decode", "png", "settle"):
        assert values[f'omost_render_phase_seconds_count{{phase="{phase}"}}'] >= 1, phase
    beats = [name for name in values if name.startswith("omost_render_worker_last_heartbeat_timestamp_seconds{")]
    assert beats and all(values[name] > time.time() - 60 for name in beats)


def test_openapi_documents_the_event_stream(env: Stack) -> None:
    assert "/v1/renders/{job_id}/events" in env.http.get("/openapi.json").json()["paths"]


def test_readyz_counts_the_live_worker(env: Stack) -> None:
    ready = env.http.get("/readyz")  # status only: names, hosts and pids are in the admin view
    assert ready.status_code == 200 and ready.json()["workers"] == 1 and "life-worker" not in ready.text


def test_idempotency_key(env: Stack) -> None:
    http = env.http
    headers = {"Idempotency-Key": f"order-{time.monotonic_ns()}"}
    first = http.post("/v1/renders", json=body(seed=7), headers=headers)
    second = http.post("/v1/renders", json=body(seed=7), headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    conflict = http.post("/v1/renders", json=body(seed=8), headers=headers)
    assert conflict.status_code == 409 and "different request body" in conflict.json()["detail"]
    assert wait_terminal(http, first.json()["id"])["status"] == "succeeded"


def webhook_over(record: dict[str, Any]) -> bool:
    """The webhook delivery is over (it reads ``pending`` / ``retrying: ...`` until then)."""
    return not (record["webhook"] or "pending").startswith(("pending", "retrying"))


def test_webhook_called_with_retries(env: Stack) -> None:
    http, receiver = env.http, env.receiver
    job_id = submit(http, webhook_url=receiver.url)
    assert wait_terminal(http, job_id)["status"] == "succeeded"
    record = wait_for(http, job_id, lambda r: webhook_over(r), 60, "webhook outcome")
    assert record["webhook"].startswith("delivered: HTTP 204 after 2 attempt"), record["webhook"]
    assert record["webhook_attempts"] == 2
    headers, data = receiver.calls[-1]
    payload = json.loads(data)
    assert payload["id"] == job_id and payload["status"] == "succeeded" and len(payload["urls"]["images"]) == 1
    assert headers["X-Omost-Event"] == "render.succeeded"
    assert headers["X-Omost-Signature"] == sign(data, WEBHOOK_SECRET)
    assert [h["Webhook-Id"] for h in receiver.attempts[-2:]] == [f"{job_id}.succeeded"] * 2  # same on each attempt

    def delivered() -> float:  # counted just after the record's outcome is written
        metric = 'omost_render_webhooks_total{outcome="delivered"}'
        lines = http.get("/metrics").text.splitlines()
        return next(float(line.split()[-1]) for line in lines if line.startswith(metric))

    wait_until(lambda: delivered() >= 1, 10, what="the delivered webhook counted")


def test_cancel_queued_and_running(env: Stack) -> None:
    http = env.http
    with env.gate.holding_all():
        long_id = submit(http, steps=4)
        wait_for(http, long_id, lambda r: r["status"] == "running" and r["progress"]["step"] >= 1, 120, "rendering")
        queued_id = submit(http, webhook_url=env.receiver.url)  # waits behind the held job

        answer = http.delete(f"/v1/renders/{queued_id}")
        assert answer.status_code == 202 and answer.json()["status"] == "canceled"
        answer = http.delete(f"/v1/renders/{long_id}")
        assert answer.status_code == 202
        assert answer.json()["status"] == "running" and answer.json()["cancel_requested"] is True

        record = wait_terminal(http, long_id, 60)  # a cancel ends the hold: the render stops at its next step
        assert record["status"] == "canceled" and record["progress"]["step"] < 4
    assert http.get(f"/v1/renders/{long_id}/images/0").status_code == 409
    assert http.delete(f"/v1/renders/{long_id}").status_code == 409
    assert [name for _, name, _ in sse_events(http, queued_id)] == ["queued", "canceled"]

    # The worker skips the canceled entry (and reports it by webhook), then carries on.
    wait_for(http, queued_id, webhook_over, 60, "webhook of the canceled job")
    assert wait_terminal(http, submit(http))["status"] == "succeeded"
    wait_for(http, long_id, lambda _: env.redis.xlen(env.keys.stream) == 0, 30, "stream drained")


def test_plain_redis_enqueue(env: Stack) -> None:
    """docs/queue-protocol.md: a client with only a Redis library can queue a job."""
    http, r, keys = env.http, env.redis, env.keys
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


def test_dead_letters(env: Stack) -> None:
    http, r, keys = env.http, env.redis, env.keys
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


def test_worker_stays_healthy(env: Stack) -> None:
    worker = env.worker
    assert worker.process is not None and worker.process.poll() is None
    assert "Traceback" not in worker.log()
    warmed_up = next(line for line in worker.log().splitlines() if "warmed up" in line)
    assert "packed" in warmed_up, warmed_up


def test_a_webhook_outlives_the_worker_that_was_sending_it(env: Stack) -> None:
    """The worker is SIGKILLed while its POST is answered 503: the next worker delivers it (at least once).

    Before deliveries were durable, the retry lived in the dead worker's thread and the webhook was lost.
    Last in the module: it kills the module's worker.
    """
    http, receiver, worker = env.http, env.receiver, env.worker
    assert worker.process is not None
    receiver.failures_left, receiver.on_failure = 1, worker.kill
    job_id = submit(http, webhook_url=receiver.url)
    assert wait_terminal(http, job_id)["status"] == "succeeded"
    wait_until(lambda: worker.process is not None and worker.process.poll() is not None, 60, what="the worker killed")
    assert not webhook_over(wait_for(http, job_id, lambda r: True)), "no worker is left to have sent it"

    env.add_worker("life-worker-2")
    record = wait_for(http, job_id, webhook_over, 180, "the webhook delivered by the next worker")
    assert record["webhook"].startswith("delivered: HTTP 204 after 2 attempt"), record["webhook"]
    assert record["webhook_attempts"] == 2
    ids = [h["Webhook-Id"] for h in receiver.attempts if h["Webhook-Id"].startswith(job_id)]
    assert ids == [f"{job_id}.succeeded"] * 2, ids  # the same id on both attempts: a receiver can dedupe
    assert json.loads(receiver.calls[-1][1])["id"] == job_id
