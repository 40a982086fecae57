"""The client raises the service's problem ``detail`` as-is (the CLI prints what it raises).

The real render API app, in-process over ASGI. These requests fail before the app touches Redis,
so none is started: the state the lifespan would build points at a closed port."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio
from pydantic import SecretStr

from render_service.app import create_app
from render_service.settings import RenderSettings
from render_service.store import JobStore
from shared.client import AsyncOmostClient, OmostAPIError
from shared.queue import RenderQueue


def fail(settings: RenderSettings, job_id: str, token: str | None = None) -> OmostAPIError:
    async def call() -> None:
        app = create_app(settings)
        app.state.redis = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0")
        app.state.store = JobStore(app.state.redis, settings.keys)
        app.state.queue = RenderQueue(app.state.redis, settings)
        transport = httpx.ASGITransport(app=app)
        async with AsyncOmostClient(render_url="http://api", token=token, transport=transport) as client:
            await client.get(job_id)

    with pytest.raises(OmostAPIError) as raised:
        asyncio.run(call())
    return raised.value


def test_validation_detail_is_the_message() -> None:
    error = fail(RenderSettings(), "a" * 65)
    assert error.status_code == 422
    assert str(error) == error.detail == error.body["detail"]
    assert error.detail.startswith("invalid request: path.job_id: String should have at most 64 characters")
    assert [e["loc"] for e in error.errors] == [["path", "job_id"]]


def test_auth_detail_is_the_message() -> None:
    error = fail(RenderSettings(api_token=SecretStr("right")), "x", token="wrong")
    assert error.status_code == 401
    assert str(error) == "missing or wrong bearer token (send 'Authorization: Bearer <token>')"
