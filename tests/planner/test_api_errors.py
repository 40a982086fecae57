"""Bad requests get a clear 4xx, an unreachable LLM a quick 503, and the token guards /v1/*.

The planner runs as a real process pointed at a port where no LLM listens; none of these requests
needs a model.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

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


def test_metrics_say_the_llm_is_down_and_count_the_failure_by_cause(orphan: RunningPlanner) -> None:
    assert post(orphan, {"prompt": "a cat"}).status_code == 503
    text = httpx.get(f"{orphan.url}/metrics", timeout=30).text
    values = {line.split()[0]: float(line.split()[-1]) for line in text.splitlines() if not line.startswith("#")}
    assert values["omost_planner_llm_up"] == 0 and values["omost_planner_redis_up"] == 1
    assert values['omost_planner_plan_failures_total{cause="llm_unavailable"}'] >= 1
    assert values['omost_planner_plan_failures_total{cause="parse_failed"}'] == 0
    assert values['omost_planner_plans_total{outcome="unavailable"}'] >= 1


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
        # One seed range with the render side (2**32 - 1 is llama.cpp's "random" marker, so one less).
        ({"prompt": "a cat", "seed": 2**32 - 1}, 422, "less than or equal to 4294967294"),
        ({"prompt": "a cat", "seed": 2**31}, 503, "unreachable"),
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


JSON_TYPE = {"Content-Type": "application/json"}


def assert_problem(response: httpx.Response, status: int) -> dict:
    """RFC 9457 problem details, the one error shape of both services."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    problem = response.json()
    assert problem.keys() >= {"type", "title", "status", "detail", "instance"}, problem
    assert problem["status"] == status and isinstance(problem["detail"], str) and problem["detail"]
    return problem


def test_every_error_is_a_problem(orphan: RunningPlanner) -> None:
    assert_problem(post(orphan, {"prompt": "a cat"}, token=None), 401)
    assert_problem(post(orphan, {"prompt": "a cat"}), 503)
    with orphan.client(TOKEN) as client:
        assert_problem(client.post("/v1/plans", content=b'{"prompt": ', headers=JSON_TYPE), 400)
        assert_problem(client.get("/v1/nothing"), 404)
        assert_problem(client.put("/v1/plans"), 405)
    problem = assert_problem(post(orphan, {"prompt": "a cat", "temperature": 9}), 422)
    assert [e["loc"] for e in problem["errors"]] == [["body", "temperature"]]
    assert "temperature" in problem["detail"]


def test_body_limit_and_no_echo(orphan: RunningPlanner) -> None:
    with orphan.client(TOKEN) as client:
        huge = client.post("/v1/plans", content=b'{"prompt": "' + b"x" * 2_000_000 + b'"}', headers=JSON_TYPE)
    assert_problem(huge, 413)
    assert "limit" in huge.json()["detail"]
    long_prompt = "y" * 500_000  # under the body limit, over the prompt limit: the error must not repeat it
    answer = post(orphan, {"prompt": long_prompt})
    assert_problem(answer, 422)
    assert len(answer.content) < 2000 and "yyyyyyyyyy" not in answer.text


@pytest.mark.parametrize(
    ("path", "document"),
    [
        ("/v1/plans", b'{"prompt": "a cat", "temperature": NaN}'),
        ("/v1/plans", b'{"prompt": "a cat", "top_p": Infinity}'),
        ("/v1/plans", b'{"prompt": "a cat", "temperature": 1e999}'),
        ("/v1/generations", b'{"prompt": "a cat", "render": {"guidance_scale": -Infinity}}'),
    ],
)
def test_non_finite_numbers_are_a_422(orphan: RunningPlanner, path: str, document: bytes) -> None:
    with orphan.client(TOKEN) as client:
        problem = assert_problem(client.post(path, content=document, headers=JSON_TYPE), 422)
    assert "finite" in problem["detail"]


def test_non_finite_canvas_number_is_a_422(orphan: RunningPlanner) -> None:
    canvas = EDITED.model_dump(mode="json")
    canvas["local_descriptions"][0]["distance_to_viewer"] = 12345.5
    document = json.dumps({"prompt": "a cat", "canvas": canvas}).replace("12345.5", "NaN").encode()
    with orphan.client(TOKEN) as client:
        assert_problem(client.post("/v1/plans", content=document, headers=JSON_TYPE), 422)


def test_numbers_are_strict(orphan: RunningPlanner) -> None:
    problem = assert_problem(post(orphan, {"prompt": "a cat", "max_new_tokens": "64"}), 422)
    assert problem["errors"][0]["loc"] == ["body", "max_new_tokens"]
    with orphan.client(TOKEN) as client:
        answer = client.post("/v1/generations", json={"prompt": "a cat", "render": {"width": "64"}})
    problem = assert_problem(answer, 422)
    assert problem["errors"][0]["loc"] == ["body", "render", "width"]


def test_token_is_checked_before_the_body(orphan: RunningPlanner) -> None:
    with orphan.client(None) as client:
        assert_problem(client.post("/v1/plans", content=b"{", headers=JSON_TYPE), 401)
        assert_problem(client.post("/v1/plans", json={"prompt": 5}), 401)


def test_conversation_can_be_read(orphan: RunningPlanner, redis_server: RedisServer) -> None:
    turns = [{"role": "user", "content": "a cat"}, {"role": "assistant", "content": "canvas = Canvas()"}]
    owner = hashlib.sha256(TOKEN.encode()).hexdigest()[:32]  # the owner digest of the token that made it
    with redis.Redis.from_url(redis_server.url) as client:  # written as the store writes it
        client.set(f"{orphan.prefix}conversation:conv-1", json.dumps({"owner": owner, "turns": turns}), ex=60)
    with orphan.client(TOKEN) as http:
        answer = http.get("/v1/conversations/conv-1")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"id": "conv-1", "turns": turns}
        assert "does not exist" in assert_problem(http.get("/v1/conversations/nope"), 404)["detail"]
        assert_problem(http.get("/v1/conversations/bad*id"), 404)
    with orphan.client(None) as http:
        assert_problem(http.get("/v1/conversations/conv-1"), 401)


def test_openapi_declares_problem_details(orphan: RunningPlanner) -> None:
    spec = httpx.get(f"{orphan.url}/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for code, response in operation["responses"].items():
                # A probe's 503 is its report, not a problem; the OpenAI-compatible routes answer in
                # OpenAI's error shape (tests/integrations/test_openapi_clients.py checks those).
                openai_route = path in ("/v1/images/generations", "/v1/models")
                if int(code) >= 400 and path != "/readyz" and not openai_route:
                    assert list(response["content"]) == ["application/problem+json"], (method, path, code)
