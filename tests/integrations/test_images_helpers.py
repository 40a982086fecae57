"""The Images API's pieces that the end-to-end tests cannot reach cheaply: the bounded wait (with a
real redis-server) and the size rules. (``b64_json`` of images in S3: tests/render_service/test_s3_images.py.)"""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from planner_service.images.errors import OpenAIErrorRoute
from planner_service.images.protocol import ImagesAPIError
from planner_service.images.serving import parse_size, read_png, wait_for_job
from planner_service.llm.client import LLMUnavailable
from planner_service.settings import PlannerSettings
from shared.canvas import Canvas, GlobalDescription
from shared.jobs import RenderRequest
from shared.queue import QueueFull, QueueSettings, RedisImages, RenderQueue, SyncRenderQueue, result_fields
from shared.queue.connect import async_client, sync_client
from shared.queue.record import Rec
from tests.support import RedisServer

CANVAS = Canvas(global_description=GlobalDescription(description="a lake", HTML_web_color_name="blue"))


@pytest.mark.parametrize(("size", "expected"), [("1024x1024", (1024, 1024)), ("1792x1024", (1792, 1024)),
                                                (None, (256, 256)), ("auto", (256, 256)), ("64x2048", (64, 2048))])
def test_sizes_the_renderer_takes(size: str | None, expected: tuple[int, int]) -> None:
    assert parse_size(size, "256x256") == expected


@pytest.mark.parametrize("size", ["1001x1000", "1024", "1024x", "x1024", "56x64", "2056x64", "1024X1024", "-8x64",
                                  "64x64\n", "\u0666\u0664x\u0666\u0664"])  # a trailing newline; Arabic-Indic digits
def test_sizes_it_refuses_name_the_size(size: str) -> None:
    with pytest.raises(ImagesAPIError) as info:
        parse_size(size, "256x256")
    assert info.value.status == 400
    assert info.value.detail.param == "size"
    assert info.value.detail.code == "invalid_size"


@pytest.mark.parametrize(("failure", "status"), [(QueueFull(20, 20), 429), (LLMUnavailable("down"), 503)])
def test_every_try_later_says_when(failure: Exception, status: int) -> None:
    """A 429 or 503 of the Images route carries Retry-After, whichever layer refused (a real route of the
    router's class, in-process: reaching a full queue or a dead LLM through the whole stack costs plans)."""
    router = APIRouter(route_class=OpenAIErrorRoute)

    @router.post("/fails")
    async def fails() -> None:
        raise failure

    app = FastAPI()
    app.include_router(router)
    app.state.settings = PlannerSettings(retry_after_seconds=7)
    answer = TestClient(app).post("/fails")
    assert answer.status_code == status and answer.headers["Retry-After"] == "7"
    assert answer.json()["error"]["message"] == str(failure)


def test_a_job_no_worker_takes_times_out_and_a_finished_one_returns(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client = async_client(redis_server.url)
        queue = RenderQueue(client, QueueSettings(key_prefix="images-helpers:"))
        request = RenderRequest(canvas=CANVAS, width=64, height=64)
        job_id = (await queue.submit(request, submitter="public")).job_id
        started = time.monotonic()
        assert await wait_for_job(queue, job_id, timeout=0.6) is None  # queued, no worker: the 504 case
        assert 0.3 < time.monotonic() - started < 2.0
        # Finish it as a worker would (image first, then the record), then the wait returns it and the PNG reads raw.
        png = b"\x89PNG\r\n\x1a\n\x00\xff binary"
        sync = sync_client(redis_server.url)
        fields = RedisImages(queue.keys).save(sync, lambda call, _what: call(), job_id=job_id, token="t", pngs=[png],
                                              ttl_seconds=60)
        SyncRenderQueue(sync, queue.keys).transact(
            job_id, lambda pipe, record: pipe.hset(queue.keys.job(job_id), mapping={
                **fields, **result_fields(seeds=[1], timings={}, model="m", device="cpu", num_images=1),
                Rec.STATUS: "succeeded"}))
        ended = await wait_for_job(queue, job_id, timeout=5)
        assert ended is not None and ended[1].status == "succeeded"
        assert await read_png(queue, ended[0], 0) == png
        with pytest.raises(ImagesAPIError):
            await read_png(queue, ended[0], 1)
        sync.close()
        await client.aclose()

    asyncio.run(scenario())
