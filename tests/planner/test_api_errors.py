"""Bad requests get a clear 4xx, an unreachable LLM a quick 503, and the token guards /v1/*.

The planner runs as a real process pointed at a port where no LLM listens; none of these requests
needs a model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from shared.plans import MAX_PROMPT_CHARS
from tests.planner.conftest import RunningPlanner, start_planner
from tests.planner.test_plans_real import EDITED
from tests.support import RedisServer, free_port

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def orphan(redis_server: RedisServer) -> Iterator[RunningPlanner]:
    running = start_planner(
        redis_server.url,
        OMOST_PLANNER_LLM_URL=f"http://127.0.0.1:{free_port()}/v1",
        OMOST_PLANNER_LLM_KIND="vllm",
        OMOST_PLANNER_API_TOKEN=TOKEN,
        OMOST_PLANNER_CONNECT_TIMEOUT_SECONDS="1",
    )
    yield running
    running.child.stop()


def post(planner: RunningPlanner, body: dict, token: str | None = TOKEN) -> httpx.Response:
    with planner.client(token) as client:
        return client.post("/v1/plans", json=body)


def test_token_is_required(orphan: RunningPlanner) -> None:
    assert post(orphan, {"prompt": "a cat"}, token=None).status_code == 401
    assert post(orphan, {"prompt": "a cat"}, token="wrong").status_code == 401
    assert httpx.get(f"{orphan.url}/healthz").status_code == 200  # operations stay open


def test_unreachable_llm_is_a_quick_503(orphan: RunningPlanner) -> None:
    started = time.monotonic()
    response = post(orphan, {"prompt": "a cat"})
    assert response.status_code == 503
    assert "unreachable" in response.json()["detail"]
    assert response.headers["retry-after"]
    assert time.monotonic() - started < 10
    streamed = post(orphan, {"prompt": "a cat", "stream": True})
    assert streamed.status_code == 503


def test_readyz_says_what_is_missing(orphan: RunningPlanner) -> None:
    response = httpx.get(f"{orphan.url}/readyz", timeout=30)
    assert response.status_code == 503
    assert response.json()["redis"] == "ok"
    assert "unreachable" in response.json()["llm"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"prompt": ""}, 422, "at least 1 character"),
        ({"prompt": "   \n"}, 422, "empty"),
        ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, 422, "at most"),
        ({}, 422, "prompt"),
        ({"prompt": "a cat", "conversation_id": "no-such-conversation"}, 404, "does not exist"),
        ({"prompt": "a cat", "conversation_id": "bad id!"}, 422, "pattern"),
        ({"prompt": "a cat", "canvas": {"global_description": {"description": "x"}}}, 422, "HTML_web_color_name"),
        ({"prompt": "a cat", "temperature": 9}, 422, "temperature"),
        ({"prompt": "a cat", "unknown": 1}, 422, "unknown"),
        ({"prompt": "a", "history": [{"role": "user", "content": "b"}], "conversation_id": "c"}, 422, "not both"),
        ({"prompt": "a cat", "max_new_tokens": 8190}, 400, "context"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_bad_requests_get_a_reason(orphan: RunningPlanner, body: dict, status: int, needle: str) -> None:
    response = post(orphan, body)
    assert response.status_code == status, response.text
    assert needle in response.text


def test_bad_canvas_enum_names_the_allowed_values(orphan: RunningPlanner) -> None:
    canvas = EDITED.model_dump(mode="json")
    canvas["local_descriptions"][0]["location"] = "somewhere"
    response = post(orphan, {"prompt": "a cat", "canvas": canvas})
    assert response.status_code == 422
    assert "on the left" in response.text


def test_bad_render_parameters_fail_before_planning(orphan: RunningPlanner) -> None:
    with orphan.client(TOKEN) as client:
        response = client.post("/v1/generations", json={"prompt": "a cat", "render": {"steps": 0}})
    assert response.status_code == 422
    assert "steps" in response.text
