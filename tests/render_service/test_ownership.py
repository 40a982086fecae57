"""Issue 13, points 2, 3 and the cost cap of 5: who can find, read and cancel a job; idempotency
keys per credential; the per-job work budget. The render API runs as a real process (no worker:
jobs stay queued, which is all these checks need)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio

from shared.jobs import RenderRequest
from shared.queue import QueueKeys, claim, decode_message, text, transact
from shared.queue import submit as queue_submit
from tests.render_service.helpers import Api, base_env, body, unique_prefix
from tests.support import ChildProcess, RedisServer, free_port, python_module, wait_for_http

A, B, ADMIN = "token-a", "token-b", "admin-secret"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def deployment(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """An API with two client tokens and an admin token: (its URL, its key prefix)."""
    prefix = unique_prefix("owners")
    api = Api(redis_server.url, prefix, tmp_path_factory.mktemp("owner-logs"), api_token=f"{A},{B}",
              admin_token=ADMIN).start()  # fmt: skip
    try:
        yield api.url, prefix
    finally:
        api.stop()


@pytest.fixture
def http(deployment: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployment[0], timeout=10) as client:
        yield client


def submit(http: httpx.Client, token: str, **headers: str) -> str:
    answer = http.post("/v1/renders", json=body(), headers={**auth(token), **headers})
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


# --- 2: probes say status only; jobs are seen only with the credential that owns them -----------


def test_readyz_reports_status_only_and_the_admin_view_has_the_details(
    http: httpx.Client, deployment: tuple[str, str], redis_server: RedisServer
) -> None:
    # A worker's heartbeat as the queue protocol defines it (docs/queue-protocol.md), written
    # directly: what matters here is what the API exposes, not loading a model.
    keys = QueueKeys(deployment[1])
    job_id = submit(http, A)
    worker = "gpu-host-7-4242-abcd"
    r = redis.Redis.from_url(redis_server.url)
    r.zadd(keys.workers, {worker: time.time()})
    r.hset(keys.worker(worker), mapping={"model": "/models/secret-path", "device": "cuda:0", "pid": 4242,
                                         "host": "gpu-host-7", "job": job_id})  # fmt: skip
    try:
        ready = http.get("/readyz", headers={"Origin": "https://evil.example"})
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "redis": "ok", "workers": 1}
        for secret in (job_id, worker, "gpu-host-7", "4242", "/models/secret-path"):
            assert secret not in ready.text

        view = http.get("/v1/admin/workers", headers=auth(ADMIN))
        assert view.status_code == 200, view.text
        (described,) = view.json()["workers"]
        assert described["name"] == worker and described["details"]["job"] == job_id
        assert described["details"]["host"] == "gpu-host-7"
        assert http.get("/v1/admin/workers").status_code == 401
        assert http.get("/v1/admin/workers", headers=auth(A)).status_code == 401
    finally:
        r.delete(keys.worker(worker))
        r.zrem(keys.workers, worker)


def test_admin_view_is_off_without_an_admin_token(redis_server: RedisServer, tmp_path: Path) -> None:
    api = Api(redis_server.url, unique_prefix("no-admin"), tmp_path).start()
    try:
        answer = httpx.get(f"{api.url}/v1/admin/workers", timeout=10)
        assert answer.status_code == 403 and "OMOST_RENDER_ADMIN_TOKEN" in answer.json()["detail"]
    finally:
        api.stop()


def test_a_job_is_visible_only_to_its_token_and_the_admin(http: httpx.Client) -> None:
    job_id = submit(http, A)
    paths = [f"/v1/renders/{job_id}", f"/v1/renders/{job_id}/images/0", f"/v1/renders/{job_id}/events"]
    for path in paths:
        answer = http.get(path, headers=auth(B))
        assert answer.status_code == 404 and "no render job" in answer.json()["detail"], (path, answer.text)
    assert http.delete(f"/v1/renders/{job_id}", headers=auth(B)).status_code == 404
    assert job_id not in http.get("/v1/renders", headers=auth(B)).text
    assert http.get(f"/v1/renders/{job_id}", headers=auth(A)).status_code == 200
    assert http.get(f"/v1/renders/{job_id}", headers=auth(ADMIN)).status_code == 200
    assert http.get(f"/v1/renders/{job_id}/images/0", headers=auth(A)).status_code == 409  # queued: seen
    assert http.get(f"/v1/renders/{job_id}").status_code == 401
    # The owner still can cancel it (after B's DELETE was refused, it is still queued).
    canceled = http.delete(f"/v1/renders/{job_id}", headers=auth(A))
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"


def test_the_admin_lists_every_job_whoever_submitted_it(
    http: httpx.Client, deployment: tuple[str, str], redis_server: RedisServer
) -> None:
    """Issue 26 §2: the admin token's GET /v1/renders listed only the admin's own jobs (none), while the
    docs say the admin sees every job: those of each token and those queued straight into Redis."""
    by_a, by_b = submit(http, A), submit(http, B)

    async def queued_straight_into_redis() -> str:
        async with redis.asyncio.Redis.from_url(redis_server.url) as direct:
            return (await queue_submit(direct, RenderRequest.model_validate(body()), prefix=deployment[1])).job_id

    no_owner = asyncio.run(queued_straight_into_redis())
    seen: list[str] = []
    cursor: str | None = None
    while True:  # every page, as a client would read them
        page = http.get("/v1/renders", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                        headers=auth(ADMIN)).json()  # fmt: skip
        seen += [item["id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert {by_a, by_b, no_owner} <= set(seen) and len(seen) == len(set(seen))
    mine = [item["id"] for item in http.get("/v1/renders", params={"limit": 100}, headers=auth(A)).json()["items"]]
    assert by_a in mine and by_b not in mine and no_owner not in mine


def test_a_running_job_stays_its_tokens(
    http: httpx.Client, deployment: tuple[str, str], redis_server: RedisServer
) -> None:
    """A worker's claim rewrites the record (status, worker, its lease token): the submitter stays.
    The claim is the queue protocol's own (shared.queue.claim, as the worker applies it), so no
    model has to load for it."""
    keys = QueueKeys(deployment[1])
    job_id = submit(http, A)
    r = redis.Redis.from_url(redis_server.url)
    with contextlib.suppress(redis.ResponseError):  # another test made the group already
        r.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    for _stream, entries in r.xreadgroup(keys.group, "test-worker", {keys.stream: ">"}, count=1000):
        for entry_id, fields in entries:
            message = decode_message(fields)
            if message.job_id == job_id:
                transact(r, keys, job_id, lambda pipe, record, e=text(entry_id), m=message: claim(
                    pipe, keys, record, entry_id=e, message=m, worker="test-worker", token="test-worker/1",
                    max_deliveries=3))  # fmt: skip
    running = http.get(f"/v1/renders/{job_id}", headers=auth(A))
    assert running.status_code == 200 and running.json()["status"] == "running", running.text
    assert http.get(f"/v1/renders/{job_id}", headers=auth(B)).status_code == 404


def test_warning_when_listening_beyond_loopback_without_a_token(redis_server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    env = base_env(redis_server.url, unique_prefix("exposed"), host="0.0.0.0", port=port)
    child = ChildProcess(python_module("render_service"), env=env, log_dir=tmp_path).start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60, process=child.process)
    finally:
        child.stop()
    assert "without an API token" in child.log() and "OMOST_RENDER_API_TOKEN" in child.log()

    quiet = Api(redis_server.url, unique_prefix("loopback"), tmp_path).start()  # 127.0.0.1
    quiet.stop()
    assert "without an API token" not in quiet.child.log()


# --- 3: idempotency keys belong to a credential --------------------------------------------------


def test_idempotency_keys_are_scoped_to_the_token(http: httpx.Client) -> None:
    key = {"Idempotency-Key": f"order-{time.monotonic_ns()}"}
    first = submit(http, A, **key)
    replay = http.post("/v1/renders", json=body(), headers={**auth(A), **key})
    assert replay.status_code == 202 and replay.json()["id"] == first
    assert replay.headers["Idempotent-Replayed"] == "true"

    other = http.post("/v1/renders", json=body(), headers={**auth(B), **key})
    assert other.status_code == 202, other.text
    assert other.json()["id"] != first and "Idempotent-Replayed" not in other.headers

    conflict = http.post("/v1/renders", json=body(seed=99), headers={**auth(B), **key})
    assert conflict.status_code == 409, conflict.text
    assert first not in conflict.text and other.json()["id"] in conflict.text  # B's own job only

    found = http.get("/v1/renders", params={"idempotency_key": key["Idempotency-Key"]}, headers=auth(B)).json()
    assert [j["id"] for j in found["items"]] == [other.json()["id"]]


def test_empty_idempotency_key_is_refused(http: httpx.Client) -> None:
    answer = http.post("/v1/renders", json=body(), headers={**auth(A), "Idempotency-Key": ""})
    assert answer.status_code == 422, answer.text
    assert "idempotency-key" in answer.json()["detail"].lower()


# --- 5 (cost): a per-job work budget --------------------------------------------------------------


def test_work_budget(http: httpx.Client) -> None:
    monster = body(width=2048, height=2048, steps=150, num_images=8, hires_fix={"scale": 2.0, "steps": 150})
    answer = http.post("/v1/renders", json=monster, headers=auth(A))
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert "megapixel-steps" in detail and "the limit is 400" in detail
    assert "OMOST_RENDER_MAX_JOB_MEGAPIXEL_STEPS" in detail
    # The hires pass counts: the same job without it fits.
    fits = body(width=1024, height=1024, steps=50, num_images=3)
    assert http.post("/v1/renders", json=fits, headers=auth(A)).status_code == 202
    with_hires = {**fits, "hires_fix": {"scale": 2.0, "steps": 50}}
    assert http.post("/v1/renders", json=with_hires, headers=auth(A)).status_code == 422


def test_work_budget_is_a_setting(redis_server: RedisServer, tmp_path: Path) -> None:
    api = Api(redis_server.url, unique_prefix("budget"), tmp_path, max_job_megapixel_steps=1).start()
    try:
        with httpx.Client(base_url=api.url, timeout=10) as client:
            assert client.post("/v1/renders", json=body()).status_code == 202  # 64x64x2: 0.008
            answer = client.post("/v1/renders", json=body(width=512, height=512, steps=10))
            assert answer.status_code == 422 and "the limit is 1:" in answer.json()["detail"]
    finally:
        api.stop()
