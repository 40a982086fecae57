"""A queued render says its place in the queue (what ``omost`` shows while it waits): the render API
as a real process on a private Redis, with no worker, so jobs stay queued until the test takes one
off the stream as a worker would (XREADGROUP through the consumer group)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared.queue import QueueKeys
from tests.render_service.helpers import Api, body, unique_prefix
from tests.support import RedisServer


@pytest.fixture()
def api(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    prefix = unique_prefix("queue-position")
    running = Api(redis_server.url, prefix, tmp_path, readyz_requires_worker="false").start()
    with httpx.Client(base_url=running.url, timeout=30) as client:
        yield client, prefix
    running.stop()


def test_queued_jobs_know_their_place(api: tuple[httpx.Client, str], redis_server: RedisServer) -> None:
    client, prefix = api
    ids = [client.post("/v1/renders", json=body(seed=n)).json()["id"] for n in range(3)]
    assert [client.get(f"/v1/renders/{i}").json()["queue_position"] for i in ids] == [1, 2, 3]

    keys = QueueKeys(prefix)
    worker = redis.Redis.from_url(redis_server.url)
    worker.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    worker.xreadgroup(keys.group, "test-worker", {keys.stream: ">"}, count=1)  # the first job is taken
    assert [client.get(f"/v1/renders/{i}").json()["queue_position"] for i in ids[1:]] == [1, 2]

    client.delete(f"/v1/renders/{ids[2]}")
    assert client.get(f"/v1/renders/{ids[2]}").json()["queue_position"] is None  # canceled: no longer waiting
