"""Issue 13, point 4: idle SSE streams must not take the Redis pool, streams are capped (429), and a
503 says whether the pool ran out or Redis is down. Real render API processes and a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from render_service.app import create_app
from render_service.settings import RenderSettings
from tests.render_service.helpers import Api, body, unique_prefix
from tests.support import RedisServer, free_port

STREAMS = 110  # more than the old pool of 100 connections, and than the 20 this API may hold


async def _open_stream(client: httpx.AsyncClient, url: str, opened: list[str], stop: asyncio.Event,
                       headers: dict[str, str] | None = None) -> int:  # fmt: skip
    """Open an SSE stream, wait for its first event (the history), then hold it idle until ``stop``."""
    async with client.stream("GET", url, headers=headers) as answer:
        if answer.status_code != 200:
            await answer.aread()
            return answer.status_code
        async for line in answer.aiter_lines():
            if line.startswith("event:"):
                opened.append(line)
                break
        await stop.wait()
        return 200


async def _idle_streams_leave_the_api_usable(url: str) -> None:
    limits = httpx.Limits(max_connections=STREAMS + 20, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        accepted = await client.post("/v1/renders", json=body())
        job_id = accepted.json()["id"]  # no worker: the job stays queued, its streams stay idle
        opened: list[str] = []
        stop = asyncio.Event()
        streams = [
            asyncio.create_task(_open_stream(client, f"/v1/renders/{job_id}/events", opened, stop))
            for _ in range(STREAMS)
        ]
        try:
            for _ in range(600):
                if len(opened) == STREAMS or any(t.done() for t in streams):
                    break
                await asyncio.sleep(0.1)
            assert len(opened) == STREAMS, f"{len(opened)} streams opened; {[t.result() for t in streams if t.done()]}"
            await asyncio.sleep(1.0)  # idle: the old code now held a pooled connection per stream

            reads = await asyncio.gather(*(client.get(f"/v1/renders/{job_id}") for _ in range(20)))
            writes = await asyncio.gather(*(client.post("/v1/renders", json=body()) for _ in range(5)))
            assert [a.status_code for a in reads] == [200] * 20, reads[0].text
            assert [a.status_code for a in writes] == [202] * 5, writes[0].text
            assert (await client.get("/readyz")).json()["redis"] == "ok"

            # A stream still hears live events: cancel the job, every stream gets "canceled" and ends.
            assert (await client.delete(f"/v1/renders/{job_id}")).status_code == 202
        finally:
            stop.set()
            results = await asyncio.gather(*streams, return_exceptions=True)
        assert results == [200] * STREAMS


def test_idle_streams_do_not_take_the_pool(redis_server: RedisServer, tmp_path: Path) -> None:
    api = Api(redis_server.url, unique_prefix("streams"), tmp_path, redis_max_connections=20,
              max_event_streams_per_client=500).start()  # fmt: skip
    try:
        asyncio.run(_idle_streams_leave_the_api_usable(api.url))
    finally:
        api.stop()
    assert "redis unavailable" not in api.child.log()


async def _stream_status(client: httpx.AsyncClient, url: str, token: str) -> tuple[int, httpx.Response]:
    request = client.build_request("GET", url, headers={"Authorization": f"Bearer {token}"})
    answer = await client.send(request, stream=True)
    if answer.status_code != 200:
        await answer.aread()
    return answer.status_code, answer


async def _caps(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        jobs = {}
        for token in ("a", "b"):
            accepted = await client.post("/v1/renders", json=body(), headers={"Authorization": f"Bearer {token}"})
            jobs[token] = f"/v1/renders/{accepted.json()['id']}/events"
        held: list[httpx.Response] = []
        try:
            for _ in range(2):
                status, answer = await _stream_status(client, jobs["a"], "a")
                assert status == 200
                held.append(answer)
            status, refused = await _stream_status(client, jobs["a"], "a")
            assert status == 429
            assert "this client already has 2 open event streams (limit 2)" in refused.json()["detail"]
            assert int(refused.headers["Retry-After"]) > 0
            status, answer = await _stream_status(client, jobs["b"], "b")
            assert status == 200
            held.append(answer)
            status, refused = await _stream_status(client, jobs["b"], "b")
            assert status == 429 and "the service has 3 open event streams in all (limit 3)" in refused.json()["detail"]

            await held.pop(0).aclose()  # closing a stream frees its place
            for _ in range(100):
                status, answer = await _stream_status(client, jobs["a"], "a")
                if status == 200:
                    held.append(answer)
                    break
                await asyncio.sleep(0.1)
            assert status == 200
        finally:
            for answer in held:
                await answer.aclose()


def test_streams_are_capped_per_client_and_in_total(redis_server: RedisServer, tmp_path: Path) -> None:
    api = Api(redis_server.url, unique_prefix("caps"), tmp_path, api_token="a,b", max_event_streams=3,
              max_event_streams_per_client=2).start()  # fmt: skip
    try:
        asyncio.run(_caps(api.url))
    finally:
        api.stop()


def test_503_when_redis_is_down_says_so(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    api = Api(dead, unique_prefix("down"), tmp_path).start()
    try:
        answer = httpx.get(f"{api.url}/v1/renders/{'0' * 32}", timeout=30)
    finally:
        api.stop()
    assert answer.status_code == 503, answer.text
    detail = answer.json()["detail"]
    assert "unreachable" in detail and "pool" not in detail
    assert "127.0.0.1" not in detail  # Redis's address stays in the log


@contextlib.asynccontextmanager
async def _served(settings: RenderSettings) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://render") as client:
            yield client, app


async def _exhausted(redis_url: str) -> None:
    settings = RenderSettings(redis_url=redis_url, key_prefix=unique_prefix("pool"), redis_max_connections=2,
                              redis_pool_timeout_seconds=0.2)  # fmt: skip
    async with _served(settings) as (client, app):
        pool = app.state.redis.connection_pool  # type: ignore[attr-defined]
        # Take every pooled connection, as a burst of slow requests would; Redis itself is fine.
        taken = [await pool.get_connection(), await pool.get_connection()]
        try:
            answer = await client.get(f"/v1/renders/{'0' * 32}")
        finally:
            for connection in taken:
                await pool.release(connection)
        assert answer.status_code == 503, answer.text
        assert "pool is exhausted" in answer.json()["detail"] and answer.headers["Retry-After"]
        assert (await client.get(f"/v1/renders/{'0' * 32}")).status_code == 404  # free again


def test_503_when_the_pool_is_exhausted_says_so(redis_server: RedisServer) -> None:
    asyncio.run(_exhausted(redis_server.url))
