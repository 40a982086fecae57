"""The Images API's pieces that the end-to-end tests cannot reach cheaply: the bounded wait (with a
real redis-server) and the size rules."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio

from planner_service.routers.images import ImagesAPIError, parse_size, read_png, wait_for_job
from shared.canvas import Canvas, GlobalDescription
from shared.jobs import RenderRequest
from shared.queue import QueueKeys, submit
from tests.support import RedisServer

CANVAS = Canvas(global_description=GlobalDescription(description="a lake", HTML_web_color_name="blue"))


@pytest.mark.parametrize(("size", "expected"), [("1024x1024", (1024, 1024)), ("1792x1024", (1792, 1024)),
                                                (None, (256, 256)), ("auto", (256, 256)), ("64x2048", (64, 2048))])
def test_sizes_the_renderer_takes(size: str | None, expected: tuple[int, int]) -> None:
    assert parse_size(size, "256x256") == expected


@pytest.mark.parametrize("size", ["1001x1000", "1024", "1024x", "x1024", "56x64", "2056x64", "1024X1024", "-8x64"])
def test_sizes_it_refuses_name_the_size(size: str) -> None:
    with pytest.raises(ImagesAPIError) as info:
        parse_size(size, "256x256")
    assert info.value.status == 400
    assert info.value.detail.param == "size"
    assert info.value.detail.code == "invalid_size"


def test_a_job_no_worker_takes_times_out_and_a_finished_one_returns(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
        keys = QueueKeys("images-helpers:")
        job_id = (await submit(client, RenderRequest(canvas=CANVAS, width=64, height=64), prefix=keys.prefix)).job_id
        started = time.monotonic()
        assert await wait_for_job(client, keys, job_id, timeout=0.6) is None  # queued, no worker: the 504 case
        assert 0.3 < time.monotonic() - started < 2.0
        # Finish it as a worker would (status + image), then the wait returns it and the PNG reads raw.
        png = b"\x89PNG\r\n\x1a\n\x00\xff binary"
        await client.hset(keys.job(job_id), mapping={"status": "succeeded", "num_images": "1"})
        await client.set(keys.image(job_id, 0), png)
        job = await wait_for_job(client, keys, job_id, timeout=5)
        assert job is not None and job.status == "succeeded"
        assert await read_png(client, keys, job_id, 0) == png
        with pytest.raises(ImagesAPIError):
            await read_png(client, keys, job_id, 1)
        await client.aclose()

    asyncio.run(scenario())


def test_b64_of_images_in_object_storage_asks_for_urls(redis_server: RedisServer) -> None:
    # A job whose record names object keys (OMOST_RENDER_IMAGE_STORE=s3) has no PNG in Redis; the planner
    # cannot read the store, so the answer names the parameter to change instead of a 502.
    async def scenario() -> None:
        client = redis.asyncio.from_url(redis_server.url, decode_responses=True)
        keys = QueueKeys("images-s3:")
        job_id = (await submit(client, RenderRequest(canvas=CANVAS, width=64, height=64), prefix=keys.prefix)).job_id
        await client.hset(keys.job(job_id), mapping={"status": "succeeded", "image_keys": '["j/t/0.png"]'})
        with pytest.raises(ImagesAPIError) as info:
            await read_png(client, keys, job_id, 0)
        assert info.value.status == 400
        assert info.value.detail.param == "response_format"
        await client.aclose()

    asyncio.run(scenario())
