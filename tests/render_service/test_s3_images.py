"""The S3 image store against a real S3-protocol server: moto in server mode, a process on loopback.

Workers and APIs are real processes using the production client code (boto3 through
``shared.queue.s3``); the test reads the bucket with its own boto3 client. The workers reach
the store through a TCP proxy that can hold back one request, so a worker can be caught with one
image uploaded and the next in flight. The tests run in order and share the server and workers:
upload and presigned fetch, the planner's b64_json read, the expiry sweep, a worker killed with
SIGKILL mid-upload, and finally the store down (moto terminated), which must fail a job with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis

from planner_service.images.serving import read_png
from planner_service.settings import PlannerSettings
from shared.client import OmostClient
from shared.queue import QueueKeys, Rec, RenderQueue
from shared.queue.connect import async_client, image_stores
from shared.queue.settings import RenderImageStoreSettings
from tests.render_service.helpers import Api, render_stack, submit, unique_prefix, wait_terminal
from tests.support import ChildProcess, RedisServer, free_port, wait_for_http, wait_until

BUCKET = "omost-test-images"
S3_PREFIX = "renders/"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKEN = "s3-test-token"

# Real worker processes (torch, model load): tens of seconds.
pytestmark = pytest.mark.slow


class MotoServer:
    """``python -m moto.server`` on a free loopback port; state is in memory, like a fresh bucket."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.child = ChildProcess(args, log_dir=log_dir)

    def start(self) -> MotoServer:
        self.child.start()
        wait_for_http(f"{self.url}/moto-api/", timeout=60, process=self.child.process)
        return self

    def signal(self, signum: int) -> None:
        assert self.child.process is not None
        os.kill(self.child.process.pid, signum)

    def stop(self) -> None:
        if self.child.process is not None and self.child.process.poll() is None:
            self.signal(signal.SIGCONT)  # a stopped process can't act on SIGTERM
        self.child.stop()


class HoldingProxy:
    """A TCP proxy to the store that, while ``hold`` is set, swallows any request whose bytes contain it:
    that upload hangs mid-request, as on a stalled network path, while everything else flows."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.hold: bytes | None = None
        self.held = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, outbound: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if outbound and self.hold is not None and self.hold in chunk:
                    self.held.set()
                    return  # neither forwarded nor closed: the sender waits for an answer that never comes
                sink.sendall(chunk)
        except OSError:
            pass
        for end in (source, sink):
            end.close()


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("s3-logs")
    moto = MotoServer(logs).start()
    proxy = HoldingProxy(moto.port)
    with pytest.MonkeyPatch.context() as mp:
        # Credentials through the standard AWS variables (moto accepts any); children inherit them.
        for name, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_CONFIG_FILE": str(logs / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(logs / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            mp.setenv(name, value)
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        prefix = unique_prefix("s3")
        settings = {
            "image_store": "s3",
            "s3_bucket": BUCKET,
            "s3_prefix": S3_PREFIX,
            "s3_region": "us-east-1",
            "s3_endpoint_url": moto.url,
            "s3_upload_retry_seconds": 3,
            "claim_idle_seconds": 2.0,
            "heartbeat_seconds": 0.25,
            "block_seconds": 0.5,
        }
        # Workers upload through the proxy; the APIs (and so the presigned URLs) use the store directly.
        worker_settings = {**settings, "s3_endpoint_url": proxy.url}
        streaming = Api(redis_server.url, prefix, logs, **settings, s3_redirect=False)
        try:
            with render_stack(
                redis_server.url, prefix, tiny_model, logs, {"w1": worker_settings}, {**settings, "api_token": TOKEN},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as stack, httpx.Client(base_url=streaming.start().url) as stream:
                yield {
                    "http": stack.http,
                    "stream": stream,
                    "s3": s3,
                    "moto": moto,
                    "proxy": proxy,
                    "workers": stack.workers,
                    "start_worker": lambda name: stack.add_worker(name, **worker_settings),
                    "keys": stack.keys,
                    "redis": stack.redis,
                    "redis_url": redis_server.url,
                }
        finally:
            streaming.stop()
            moto.stop()
            proxy.close()


def object_names(s3: Any, job_id: str) -> set[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{S3_PREFIX}{job_id}/")
    return {o["Key"] for o in listing.get("Contents", [])}


def objects(s3: Any, job_id: str) -> dict[str, bytes]:
    return {name: s3.get_object(Bucket=BUCKET, Key=name)["Body"].read() for name in object_names(s3, job_id)}


def recorded_keys(env: dict[str, Any], job_id: str) -> list[str]:
    return json.loads(env["redis"].hget(env["keys"].job(job_id), Rec.IMAGE_KEYS))


def test_images_are_uploaded_and_served_by_presigned_redirect(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    r: redis.Redis = env["redis"]
    keys: QueueKeys = env["keys"]
    job_id = submit(http, num_images=2)
    job = wait_terminal(http, job_id)
    assert job["status"] == "succeeded", job
    names = recorded_keys(env, job_id)
    stored = objects(env["s3"], job_id)
    assert sorted(names) == sorted(stored) and len(names) == 2
    assert all(png.startswith(PNG_MAGIC) for png in stored.values())
    # Only keys in Redis, no bytes.
    assert not r.exists(keys.image(job_id, 0)) and not r.exists(keys.image(job_id, 1))
    # Each object is due for deletion when the record expires (TTL restarted at finish).
    for name in names:
        assert abs(r.zscore(keys.image_expiry, name) - (job["finished_at"] + 86400)) < 5

    for index, name in enumerate(names):
        answer = http.get(f"/v1/renders/{job_id}/images/{index}")
        assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        assert location.startswith(env["moto"].url) and "X-Amz-Signature=" in location
        assert "X-Amz-Expires=900" in location
        assert answer.headers["cache-control"] == "no-store"
        fetched = httpx.get(location)  # a plain client, no credentials: the URL itself authorizes
        assert fetched.status_code == 200 and fetched.content == stored[name]
        assert http.get(f"/v1/renders/{job_id}/images/{index}", follow_redirects=True).content == stored[name]
        # With OMOST_RENDER_S3_REDIRECT=false the API streams the same bytes.
        streamed = env["stream"].get(f"/v1/renders/{job_id}/images/{index}")
        assert streamed.status_code == 200 and streamed.headers["content-type"] == "image/png"
        assert streamed.content == stored[name]
    assert http.get(f"/v1/renders/{job_id}/images/2").status_code == 404
    # The Python client (and so the CLI) follows the redirect; the API requires its token, the URL does not.
    with OmostClient(render_url=str(http.base_url), token=TOKEN) as client:
        assert client.image(client.get(job_id), 1) == stored[names[1]]
    env["first_job"] = job_id


def test_the_planners_b64_json_reads_images_from_the_store(env: dict[str, Any]) -> None:
    """``/v1/images/generations`` with ``b64_json`` (once a 400 asking for ``response_format=url`` with this
    store) reads a job's PNGs through the planner's image store, configured from the render service's
    variables as the planner process reads them. In-process: the route itself needs a planning LLM and is
    driven end to end by tests/integrations/test_openai_images.py."""
    job_id = env["first_job"]
    stored = objects(env["s3"], job_id)
    names = recorded_keys(env, job_id)
    variables = {
        "OMOST_RENDER_IMAGE_STORE": "s3",
        "OMOST_RENDER_S3_BUCKET": BUCKET,
        "OMOST_RENDER_S3_PREFIX": S3_PREFIX,
        "OMOST_RENDER_S3_REGION": "us-east-1",
        "OMOST_RENDER_S3_ENDPOINT_URL": env["moto"].url,
    }

    async def read_all() -> list[bytes]:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in variables.items():
                mp.setenv(name, value)
            settings = PlannerSettings(redis_url=env["redis_url"], key_prefix=env["keys"].prefix)
            _, readable = image_stores(RenderImageStoreSettings(), settings.keys)
        client = async_client(settings.redis_url)
        try:
            queue = RenderQueue(client, settings, image_stores=readable)
            record = await queue.read(job_id)
            return [await read_png(queue, record, index) for index in range(record.num_images)]
        finally:
            await client.aclose()

    assert asyncio.run(read_all()) == [stored[name] for name in names]


def test_expired_images_are_deleted_by_the_workers_sweep(env: dict[str, Any]) -> None:
    """The sweep deletes what the expiry set says is due. Waiting out a real TTL (at least 60 s) is too
    slow for a test, so the job's entries are moved to the past, as the clock would."""
    r: redis.Redis = env["redis"]
    keys: QueueKeys = env["keys"]
    job_id = env["first_job"]
    names = recorded_keys(env, job_id)
    r.zadd(keys.image_expiry, {name: time.time() - 1 for name in names})
    wait_until(lambda: not object_names(env["s3"], job_id), 20, 0.25, "expired objects deleted")
    assert all(r.zscore(keys.image_expiry, name) is None for name in names)
    answer = env["stream"].get(f"/v1/renders/{job_id}/images/0")
    assert answer.status_code == 404 and "expired" in answer.json()["detail"]


def test_worker_killed_mid_upload_leaves_the_job_to_another_which_stores_all_images(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    proxy: HoldingProxy = env["proxy"]
    r: redis.Redis = env["redis"]
    keys: QueueKeys = env["keys"]
    w1: ChildProcess = env["workers"]["w1"]
    proxy.hold = b"/1.png HTTP/1.1"  # the request line of the second image's PUT
    try:
        job_id = submit(http, num_images=2)
        assert proxy.held.wait(60), "w1 never uploaded its second image"
        w1.kill()  # SIGKILL: no requeue, no cleanup, image 0 already in the bucket
    finally:
        proxy.hold = None
    orphans = object_names(env["s3"], job_id)
    assert len(orphans) == 1 and next(iter(orphans)).endswith("/0.png") and "/w1-" in next(iter(orphans))

    env["workers"]["w2"] = env["start_worker"]("w2")
    job = wait_terminal(http, job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["worker"] == "w2" and job["deliveries"] == 2 and job["num_images"] == 2
    names = recorded_keys(env, job_id)
    assert len(names) == 2 and all("/w2-" in name for name in names), names
    stored = objects(env["s3"], job_id)
    for index, name in enumerate(names):
        fetched = http.get(f"/v1/renders/{job_id}/images/{index}", follow_redirects=True)
        assert fetched.status_code == 200 and fetched.content == stored[name]
    # w1's half set is in no record, but it was entered for the sweep before its upload began.
    assert set(stored) == set(names) | orphans
    assert all(r.zscore(keys.image_expiry, name) is not None for name in stored)
    r.zadd(keys.image_expiry, {name: time.time() - 1 for name in orphans})
    wait_until(lambda: object_names(env["s3"], job_id) == set(names), 20, 0.25, "orphans swept")
    env["second_job"] = job_id


def test_store_down_fails_the_job_with_the_reason(env: dict[str, Any]) -> None:
    http: httpx.Client = env["http"]
    env["moto"].stop()
    env["proxy"].close()
    job_id = submit(http)
    job = wait_terminal(http, job_id, timeout=90)
    assert job["status"] == "failed", job
    assert f"could not store image 1 of 1 in s3://{BUCKET}/{S3_PREFIX}{job_id}/" in job["error"], job["error"]
    assert "Could not connect to the endpoint URL" in job["error"], job["error"]
    assert env["workers"]["w2"].process.poll() is None, "the worker outlives the store outage"
    # Streaming through an unreachable store is a 503 saying so, not a 500.
    answer = env["stream"].get(f"/v1/renders/{env['second_job']}/images/0")
    assert answer.status_code == 503 and "image store is unavailable" in answer.json()["detail"], answer.text
