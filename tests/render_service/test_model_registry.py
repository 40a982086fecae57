"""The model registry as a submit reads it, on a real redis-server: one round trip for the model a
request names, a short cache that never outlives the registration it read (a model whose last
registration expired is refused at once, a newly registered one is taken at once), and the same
through the render API as a process. Registrations are written as a worker's heartbeat writes them
(:func:`shared.queue.models.register_model`): no model is loaded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio
from fastapi.exceptions import RequestValidationError

from shared.jobs import RenderRequest
from shared.models import ModelInfo
from shared.queue import QueueKeys, QueueSettings, RenderQueue
from shared.queue.models import find_model, register_model
from shared.service.submission import fit_model
from tests.render_service.helpers import CANVAS, Api, unique_prefix
from tests.support import RedisServer, wait_until

SDXL = ModelInfo(
    name="default", family="sdxl", source="tiny", default_steps=25, default_guidance_scale=5.0,
    default_sampler="dpmpp_2m_karras", samplers=["dpmpp_2m_karras", "euler"], size_multiple=8,
    options=["negative_prompt", "hires_fix", "initial_latent_strength"],
)  # fmt: skip
FLUX = ModelInfo(
    name="flux", family="flux", variant="dev", source="tiny-flux", default_steps=28, default_guidance_scale=3.5,
    default_sampler="euler", samplers=["euler"], size_multiple=16, options=["flux"],
)  # fmt: skip


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of this test's own: its command counts are this test's alone."""
    running = RedisServer().start()
    yield running
    running.stop()


def register(url: str, keys: QueueKeys, info: ModelInfo, ttl_seconds: int) -> None:
    with redis.Redis.from_url(url) as client, client.pipeline() as pipe:
        register_model(pipe, keys, info, ttl_seconds)
        pipe.execute()


def registered(url: str, keys: QueueKeys, name: str) -> bool:
    with redis.Redis.from_url(url) as client:
        return bool(client.exists(keys.model_info(name)))


def reads(url: str) -> int:
    """GETs the server has answered (the registration reads)."""
    with redis.Redis.from_url(url) as client:
        return int(client.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


def request(model: str | None) -> RenderRequest:
    return RenderRequest.model_validate({"canvas": CANVAS, "width": 64, "height": 64, "model": model})


def test_find_model_reads_one_registration_and_its_time_left(server: RedisServer) -> None:
    keys = QueueKeys(unique_prefix("registry"))
    register(server.url, keys, FLUX, 60)

    async def run() -> None:
        async with redis.asyncio.Redis.from_url(server.url) as client:
            info, left = await find_model(client, keys, "flux")
            assert info is not None and info.name == "flux" and info.size_multiple == 16
            assert 0 < left <= 60
            assert await find_model(client, keys, "sd3") == (None, 0.0)

    asyncio.run(run())


def test_a_submit_reads_the_registry_at_most_once_and_never_past_its_expiry(server: RedisServer) -> None:
    keys = QueueKeys(unique_prefix("registry"))
    register(server.url, keys, SDXL, 600)

    async def run() -> None:
        async with redis.asyncio.Redis.from_url(server.url) as client:
            queue = RenderQueue(client, QueueSettings(key_prefix=keys.prefix))
            before = reads(server.url)
            fitted = await fit_model(queue, request("default"))
            assert fitted.steps == 25 and fitted.sampler == "dpmpp_2m_karras"
            await fit_model(queue, request("default"))  # POST /v1/renders fits twice: the second is kept
            assert reads(server.url) - before == 1
            register(server.url, keys, FLUX, 1)  # the shortest registration: its worker's last heartbeat
            assert (await fit_model(queue, request("flux"))).sampler == "euler"

            # The flux registration expires (its worker left): the very next submit is refused, cache or not.
            wait_until(lambda: not registered(server.url, keys, "flux"), 10, 0.05, "the registration to expire")
            with pytest.raises(RequestValidationError) as refused:
                await fit_model(queue, request("flux"))
            error = refused.value.errors()[0]
            assert error["type"] == "model_not_served" and error["loc"] == ("body", "model")
            assert "no worker serves model 'flux' (served here: default;" in error["msg"]

            # A worker registers it again: taken at once (a refusal is not kept).
            register(server.url, keys, FLUX, 600)
            assert (await fit_model(queue, request("flux"))).steps == 28

    asyncio.run(run())


def test_without_any_registration_the_default_model_is_taken_and_others_refused(server: RedisServer) -> None:
    keys = QueueKeys(unique_prefix("registry"))

    async def run() -> None:
        async with redis.asyncio.Redis.from_url(server.url) as client:
            queue = RenderQueue(client, QueueSettings(key_prefix=keys.prefix))
            plain = request(None)
            assert await fit_model(queue, plain) is plain  # workers not started yet: taken as it is
            with pytest.raises(RequestValidationError) as refused:
                await fit_model(queue, request("flux"))
            assert "(served here: none;" in refused.value.errors()[0]["msg"]

    asyncio.run(run())


def test_the_render_api_refuses_a_model_once_its_registration_expired(server: RedisServer, tmp_path: Path) -> None:
    keys = QueueKeys(unique_prefix("registry"))
    register(server.url, keys, SDXL, 600)
    api = Api(server.url, keys.prefix, tmp_path).start()
    try:
        body = {"canvas": CANVAS, "width": 64, "height": 64, "model": "flux"}
        with httpx.Client(base_url=api.url, timeout=30) as http:
            register(server.url, keys, FLUX, 3)  # the last heartbeat of its last worker
            accepted = http.post("/v1/renders", json=body)
            assert accepted.status_code == 202, accepted.text  # and the API now holds the registration
            wait_until(lambda: not registered(server.url, keys, "flux"), 10, 0.05, "the registration to expire")
            refused = http.post("/v1/renders", json=body)
            assert refused.status_code == 422, refused.text
            assert refused.json()["errors"][0]["msg"].startswith("no worker serves model 'flux'")
            assert http.post("/v1/renders", json={**body, "model": "default"}).status_code == 202
    finally:
        api.stop()
