"""Issue 13, point 7: the planner admits a bounded number of plans (429 + Retry-After beyond, never
a false 503), and a client that hangs up stops its plan (the LLM request is closed) and never gets a
render queued. The planner is a real process; the LLM is ``tests/planner/slow_llm.py``, a real
OpenAI-compatible server on loopback that is slow on purpose and reports abandoned requests (its
docstring says why SmolLM2 cannot do this job)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.planner.conftest import RunningPlanner, start_planner
from tests.planner.slow_llm import CODE, SlowLLM, start_slow_llm
from tests.planner.test_plans_real import stream_plan
from tests.render_service.helpers import Api
from tests.support import RedisServer, wait_until

LIMIT = 2
DELAY = 3.0
TOKEN = "planner-token"


@pytest.fixture(scope="module")
def slow_llm() -> Iterator[SlowLLM]:
    running = start_slow_llm(DELAY)
    yield running
    running.stop()


def on_slow_llm(slow_llm: SlowLLM) -> dict[str, str]:
    """The planner's settings for the slow server: no grammar field, the fixture's canvas as it is."""
    return {
        "OMOST_PLANNER_LLM_URL": f"{slow_llm.url}/v1",
        "OMOST_PLANNER_LLM_KIND": "none",
        "OMOST_PLANNER_GRAMMAR_PROFILE": "permissive",
        "OMOST_PLANNER_ONE_SHOT": "false",
    }


@pytest.fixture(scope="module")
def planner(slow_llm: SlowLLM, redis_server: RedisServer) -> Iterator[RunningPlanner]:
    running = start_planner(
        redis_server.url,
        **on_slow_llm(slow_llm),
        OMOST_PLANNER_MAX_CONCURRENT_PLANS=str(LIMIT),
        OMOST_PLANNER_API_TOKEN=TOKEN,
    )
    yield running
    running.child.stop()


HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def _burst(url: str, count: int, stream: bool) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=HEADERS) as client:

        async def one() -> httpx.Response:
            answer = await client.post("/v1/plans", json={"prompt": "a dragon battle", "stream": stream})
            await answer.aread()
            return answer

        return await asyncio.gather(*(one() for _ in range(count)))


def test_plans_beyond_the_limit_get_429(planner: RunningPlanner, slow_llm: SlowLLM) -> None:
    before = slow_llm.stats()
    answers = asyncio.run(_burst(planner.url, 6, stream=False))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * LIMIT + [429] * (6 - LIMIT), [a.text[:200] for a in answers]
    busy = next(a for a in answers if a.status_code == 429)
    assert int(busy.headers["Retry-After"]) > 0
    assert "OMOST_PLANNER_MAX_CONCURRENT_PLANS" in busy.json()["detail"]
    after = slow_llm.stats()
    assert after["started"] - before["started"] == LIMIT  # the refused ones cost the LLM nothing
    assert after["max_in_flight"] <= LIMIT
    # Streamed plans hold a place too, and give it back when they end.
    streamed = asyncio.run(_burst(planner.url, 3, stream=True))
    assert sorted(a.status_code for a in streamed) == [200] * LIMIT + [429]
    assert all("event: plan" in a.text for a in streamed if a.status_code == 200)
    again = asyncio.run(_burst(planner.url, 1, stream=False))
    assert again[0].status_code == 200


def _wait_abandoned(slow_llm: SlowLLM, before: dict[str, int]) -> float:
    started = time.monotonic()
    wait_until(lambda: slow_llm.stats()["abandoned"] > before["abandoned"], DELAY, 0.05, "the LLM request closed")
    return time.monotonic() - started


def test_a_client_that_hangs_up_stops_its_generation(
    planner: RunningPlanner, slow_llm: SlowLLM, redis_server: RedisServer
) -> None:
    stream_key = f"{planner.prefix}renders"
    r = redis.Redis.from_url(redis_server.url)
    before = slow_llm.stats()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{planner.url}/v1/generations", json={"prompt": "a dragon battle", "render": {"steps": 2}},
                   headers=HEADERS, timeout=httpx.Timeout(10, read=0.5))  # fmt: skip
    _wait_abandoned(slow_llm, before)  # well before the LLM would have finished
    time.sleep(DELAY + 1)  # past the moment the abandoned plan would have been ready
    assert r.xlen(stream_key) == 0, "a render was queued for a client that had left"
    assert slow_llm.stats()["finished"] == before["finished"]


def test_a_client_that_hangs_up_stops_its_plan(planner: RunningPlanner, slow_llm: SlowLLM) -> None:
    before = slow_llm.stats()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{planner.url}/v1/plans", json={"prompt": "a dragon battle"}, headers=HEADERS,
                   timeout=httpx.Timeout(10, read=0.5))  # fmt: skip
    _wait_abandoned(slow_llm, before)

    before = slow_llm.stats()
    plan = {"prompt": "a dragon battle", "stream": True}
    with (
        httpx.Client(base_url=planner.url, headers=HEADERS, timeout=30) as client,
        client.stream("POST", "/v1/plans", json=plan) as answer,
    ):
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("event: delta"):
                break  # read one delta, then hang up
    _wait_abandoned(slow_llm, before)


def test_generations_keep_the_work_budget_and_the_owner(
    planner: RunningPlanner, slow_llm: SlowLLM, redis_server: RedisServer, tmp_path
) -> None:
    before = slow_llm.stats()
    monster = {"width": 2048, "height": 2048, "steps": 150, "num_images": 8}
    answer = httpx.post(f"{planner.url}/v1/generations", json={"prompt": "a dragon", "render": monster},
                        headers=HEADERS, timeout=30)  # fmt: skip
    assert answer.status_code == 422 and "the limit is 400" in answer.json()["detail"]
    assert slow_llm.stats()["started"] == before["started"]  # refused before planning

    accepted = httpx.post(f"{planner.url}/v1/generations", json={"prompt": "a dragon", "render": {"steps": 2}},
                          headers=HEADERS, timeout=60)  # fmt: skip
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    owner = redis.Redis.from_url(redis_server.url).hget(f"{planner.prefix}render:{job_id}", "submitter")
    assert owner == hashlib.sha256(TOKEN.encode()).hexdigest()[:32].encode()
    # The render API with the same token (and another client's) shows it to its owner only.
    api = Api(redis_server.url, planner.prefix, tmp_path, api_token=f"{TOKEN},someone-else").start()
    try:
        mine = httpx.get(f"{api.url}/v1/renders/{job_id}", headers=HEADERS, timeout=10)
        theirs = httpx.get(f"{api.url}/v1/renders/{job_id}", headers={"Authorization": "Bearer someone-else"})
        assert mine.status_code == 200 and theirs.status_code == 404
    finally:
        api.stop()


def test_a_plan_past_its_time_limit_stops_and_frees_the_llm(slow_llm: SlowLLM, redis_server: RedisServer) -> None:
    """Issue 25's long tail: a plan is bounded in time as well as in tokens. Past
    OMOST_PLANNER_PLAN_TIMEOUT_SECONDS a plain plan is a 504 and a streamed one ends with the canvas of
    its complete calls (truncated); either way the LLM request is closed, so the server stops on it."""
    limit = DELAY / 2
    running = start_planner(redis_server.url, **on_slow_llm(slow_llm), OMOST_PLANNER_PLAN_TIMEOUT_SECONDS=str(limit))
    try:
        before = slow_llm.stats()
        with running.client() as client:
            plain = client.post("/v1/plans", json={"prompt": "a dragon battle"})
        assert plain.status_code == 504, plain.text
        assert "OMOST_PLANNER_PLAN_TIMEOUT_SECONDS" in plain.json()["detail"]
        deltas, final = stream_plan(running, prompt="a dragon battle")
        assert final["truncated"] and final["canvas"]["global_description"]["description"]
        assert len("".join(deltas)) < len(CODE)  # stopped part way
        wait_until(lambda: slow_llm.stats()["abandoned"] - before["abandoned"] == 2, 10, 0.1, "both requests closed")
    finally:
        running.child.stop()
