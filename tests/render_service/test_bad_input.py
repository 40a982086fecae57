"""Every bad input gets a 4xx whose detail says what was wrong (API process only, no worker)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.render_service.helpers import CANVAS, Api, body, unique_prefix
from tests.support import RedisServer


@pytest.fixture(scope="module")
def client(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    logs = tmp_path_factory.mktemp("bad-input-logs")
    api = Api(redis_server.url, unique_prefix("bad"), logs).start()
    try:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            yield http
    finally:
        api.stop()


def post(client: httpx.Client, payload: dict, **kwargs) -> httpx.Response:
    return client.post("/v1/renders", json=payload, **kwargs)


def expect(answer: httpx.Response, status: int, *fragments: str) -> None:
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    for fragment in fragments:
        assert fragment in detail, f"{fragment!r} not in {detail!r}"


def canvas_with(**changes) -> dict:
    canvas = copy.deepcopy(CANVAS)
    canvas["local_descriptions"][0].update(changes)
    return canvas


def test_missing_canvas_fields(client: httpx.Client) -> None:
    expect(post(client, {"width": 64}), 422, "canvas: Field required")
    expect(post(client, body(canvas={"local_descriptions": []})), 422, "canvas.global_description: Field required")


def test_unknown_enum_lists_allowed_values(client: httpx.Client) -> None:
    answer = post(client, body(canvas=canvas_with(location="somewhere nice")))
    expect(answer, 422, "canvas.local_descriptions.0.location", "'on the left'", "'in the center'")
    expect(post(client, body(sampler="plms")), 422, "sampler", "'dpmpp_2m_karras'", "'euler'")
    expect(post(client, body(canvas=canvas_with(HTML_web_color_name="blurple"))), 422, "'orangered'")


def test_bad_canvas_values(client: httpx.Client) -> None:
    expect(post(client, body(canvas=canvas_with(distance_to_viewer=-1))), 422, "distance_to_viewer")
    expect(post(client, body(canvas=canvas_with(description="  .. "))), 422, "must contain words")
    expect(post(client, body(canvas=canvas_with(description="x" * 1001))), 422, "at most 1000 characters")
    too_many = copy.deepcopy(CANVAS)
    too_many["local_descriptions"] = too_many["local_descriptions"] * 21
    expect(post(client, body(canvas=too_many)), 422, "local_descriptions", "at most 20 items")
    expect(post(client, body(canvas=canvas_with(colour="red"))), 422, "colour: Extra inputs are not permitted")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("width", 70, "multiple of 8"),
        ("height", 100, "multiple of 8"),
        ("width", 4096, "less than or equal to 2048"),
        ("height", 32, "greater than or equal to 64"),
        ("steps", 151, "steps: Input should be less than or equal to 150"),
        ("steps", 0, "steps: Input should be greater than or equal to 1"),
        ("num_images", 9, "num_images: Input should be less than or equal to 8"),
        ("guidance_scale", -1, "guidance_scale"),
        ("seed", -5, "seed"),
        ("width", "wide", "width: Input should be a valid integer"),
        ("initial_latent_strength", 1.5, "initial_latent_strength"),
        ("hires_fix", {"scale": 3}, "hires_fix.scale"),
        ("priority", "high", "priority: Extra inputs are not permitted"),
    ],
)
def test_out_of_range_parameters(client: httpx.Client, field: str, value: object, fragment: str) -> None:
    expect(post(client, body(**{field: value})), 422, fragment)


def test_malformed_json(client: httpx.Client) -> None:
    answer = client.post("/v1/renders", content=b'{"canvas": {', headers={"Content-Type": "application/json"})
    expect(answer, 400, "malformed JSON")
    answer = client.post("/v1/renders", content=b"[1, 2", headers={"Content-Type": "application/json"})
    expect(answer, 400, "malformed JSON")
    answer = client.post("/v1/renders", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text


def test_oversized_body(client: httpx.Client) -> None:
    huge = json.dumps(body(negative_prompt="x" * 300_000)).encode()
    expect(client.post("/v1/renders", content=huge, headers={"Content-Type": "application/json"}), 413, "limit")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming too
        for _ in range(30):
            yield b" " * 10_000

    answer = client.post("/v1/renders", content=chunks(), headers={"Content-Type": "application/json"})
    expect(answer, 413, "limit")


def test_unknown_ids(client: httpx.Client) -> None:
    for job_id in ("0" * 32, "does-not-exist", "bad*id"):
        expect(client.get(f"/v1/renders/{job_id}"), 404, "no render job")
        expect(client.get(f"/v1/renders/{job_id}/images/0"), 404, "no render job")
        expect(client.get(f"/v1/renders/{job_id}/events"), 404, "no render job")
        expect(client.delete(f"/v1/renders/{job_id}"), 404, "no render job")
    assert client.get("/v1/renders/" + "a" * 65).status_code == 422
    assert client.get("/v1/nothing").status_code == 404


def test_image_of_unfinished_job(client: httpx.Client) -> None:
    job_id = post(client, body()).json()["id"]  # no worker runs in this module: it stays queued
    expect(client.get(f"/v1/renders/{job_id}/images/0"), 409, "is queued")
    expect(client.get(f"/v1/renders/{job_id}/images/-1"), 422, "index")
    canceled = client.delete(f"/v1/renders/{job_id}")
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"
    expect(client.delete(f"/v1/renders/{job_id}"), 409, "already ended (canceled)")


def test_webhook_targets_refused(client: httpx.Client) -> None:
    for url in ("http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://169.254.169.254/latest", "http://[::1]/"):
        expect(post(client, body(webhook_url=url)), 422, "webhook_url", "loopback, private or link-local")
    expect(post(client, body(webhook_url="ftp://example.com/x")), 422, "webhook_url")
    expect(post(client, body(webhook_url="http://user:pw@example.com/")), 422, "credentials")


def test_bad_idempotency_key(client: httpx.Client) -> None:
    expect(post(client, body(), headers={"Idempotency-Key": "k" * 256}), 422, "idempotency-key")


@pytest.fixture(scope="module")
def guarded(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    logs: Path = tmp_path_factory.mktemp("guarded-logs")
    api = Api(redis_server.url, unique_prefix("guarded"), logs, api_token="s3cret", max_queue_depth=2).start()
    try:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            yield http
    finally:
        api.stop()


def test_bearer_token(guarded: httpx.Client) -> None:
    expect(post(guarded, body()), 401, "bearer token")
    expect(post(guarded, body(), headers={"Authorization": "Bearer wrong"}), 401, "bearer token")
    assert guarded.get("/v1/renders/x", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/healthz").status_code == 200  # probes need no token
    assert guarded.get("/metrics").status_code == 200


def test_queue_depth_limit(guarded: httpx.Client) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    for _ in range(2):
        assert post(guarded, body(), headers=auth).status_code == 202
    answer = post(guarded, body(), headers=auth)
    expect(answer, 429, "queue holds 2 jobs")
    assert int(answer.headers["Retry-After"]) > 0


def test_browsers_on_other_origins_may_call_the_api(client: httpx.Client) -> None:
    """The playground is served by the planner (another origin): CORS must let its page in."""
    origin = "http://127.0.0.1:8000"
    preflight = client.options(
        "/v1/renders",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,idempotency-key"},
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] in ("*", origin)
    assert "idempotency-key" in preflight.headers["access-control-allow-headers"].lower()
    answer = client.get("/v1/renders/nope", headers={"Origin": origin})
    assert answer.status_code == 404
    assert answer.headers["access-control-allow-origin"] in ("*", origin)


PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}
JSON_TYPE = {"Content-Type": "application/json"}


def assert_problem(answer: httpx.Response, status: int) -> dict:
    """RFC 9457 problem details: the one error shape of both services."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.headers
    problem = answer.json()
    assert problem.keys() >= PROBLEM_FIELDS, problem
    assert problem["status"] == status and problem["type"] == "about:blank" and problem["title"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    return problem


def test_every_error_is_a_problem(client: httpx.Client, guarded: httpx.Client) -> None:
    assert_problem(client.post("/v1/renders", content=b"{", headers={"Content-Type": "application/json"}), 400)
    assert_problem(post(guarded, body()), 401)
    assert_problem(client.get("/v1/renders/" + "0" * 32), 404)
    assert_problem(client.get("/v1/nothing"), 404)  # routing's own 404
    assert_problem(client.put("/v1/renders/abc"), 405)  # routing's own 405
    json_type = {"Content-Type": "application/json"}
    assert_problem(client.post("/v1/renders", content=b" " * 300_000, headers=json_type), 413)
    problem = assert_problem(post(client, body(width=70)), 422)
    assert problem["errors"] == [{"loc": ["body", "width"], "msg": problem["errors"][0]["msg"], "type": "value_error"}]


def test_validation_errors_on_get_are_an_array_without_the_input(client: httpx.Client) -> None:
    problem = assert_problem(client.get("/v1/renders/" + "a" * 65), 422)
    assert [e["loc"] for e in problem["errors"]] == [["path", "job_id"]]
    assert "a" * 65 not in problem["detail"] and all("input" not in e for e in problem["errors"])
    problem = assert_problem(client.get("/v1/renders/x/images/-1"), 422)
    assert problem["errors"][0]["loc"] == ["path", "index"]


def test_numbers_are_strict_and_finite(client: httpx.Client) -> None:
    expect(post(client, body(width="64")), 422, "width: Input should be a valid integer")
    expect(post(client, body(steps=2.0)), 422, "steps")
    for raw in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        payload = json.dumps(body()).replace('"steps": 2', '"guidance_scale": GS, "steps": 2').encode()
        answer = client.post("/v1/renders", content=payload.replace(b"GS", raw), headers=JSON_TYPE)
        expect(answer, 422, "finite")


def test_options_lists_every_method_of_the_path(client: httpx.Client) -> None:
    answer = client.options("/v1/renders/abc")
    assert answer.status_code == 204
    assert {m.strip() for m in answer.headers["allow"].split(",")} >= {"GET", "DELETE"}
    assert "DELETE" in client.put("/v1/renders/abc").headers["allow"]


def test_token_is_checked_before_the_body(guarded: httpx.Client) -> None:
    malformed = guarded.post("/v1/renders", content=b"{", headers={"Content-Type": "application/json"})
    assert_problem(malformed, 401)
    assert_problem(post(guarded, {"width": "wide"}), 401)


def test_openapi_declares_problem_details_for_every_error(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert "ProblemDetails" in spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            errors = {code: r for code, r in operation["responses"].items() if int(code) >= 400}
            assert "500" in errors, (method, path)
            if path.startswith("/v1/"):
                assert "401" in errors, (method, path)
            if path.startswith("/v1/") and (operation.get("parameters") or "requestBody" in operation):
                assert "422" in errors, (method, path)
            if method == "post":
                assert {"400", "413", "422", "429"} <= errors.keys(), (method, path)
            for code, response in errors.items():
                if path != "/readyz":  # a probe's 503 is its report, not a problem
                    assert list(response["content"]) == ["application/problem+json"], (method, path, code)


def test_request_id_is_returned(client: httpx.Client) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "rid-123"}).headers["x-request-id"] == "rid-123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 32


def test_listing_newest_first_with_cursor_and_filters(client: httpx.Client) -> None:
    ids = [submit_id(client, {"Idempotency-Key": f"list-{i}-{time.time()}"}) for i in range(3)]
    first = client.get("/v1/renders", params={"limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    rest = client.get("/v1/renders", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert rest["items"][0]["id"] == ids[0]
    assert not {j["id"] for j in rest["items"]} & {j["id"] for j in page["items"]}
    client.delete(f"/v1/renders/{ids[1]}")
    canceled = client.get("/v1/renders", params={"status": "canceled", "limit": 100}).json()["items"]
    assert ids[1] in [j["id"] for j in canceled] and all(j["status"] == "canceled" for j in canceled)
    assert_problem(client.get("/v1/renders", params={"limit": 101}), 422)
    assert_problem(client.get("/v1/renders", params={"status": "sleeping"}), 422)
    assert_problem(client.get("/v1/renders", params={"cursor": "not a cursor"}), 422)


def test_listing_by_idempotency_key(client: httpx.Client) -> None:
    key = f"find-me-{time.time()}"
    job_id = submit_id(client, {"Idempotency-Key": key})
    found = client.get("/v1/renders", params={"idempotency_key": key}).json()
    assert [j["id"] for j in found["items"]] == [job_id] and found["next_cursor"] is None
    assert client.get("/v1/renders", params={"idempotency_key": "never-used"}).json()["items"] == []


def test_listing_needs_the_token(guarded: httpx.Client) -> None:
    assert_problem(guarded.get("/v1/renders"), 401)
    answer = guarded.get("/v1/renders", headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 200
    assert {j["status"] for j in answer.json()["items"]} <= {"queued", "canceled"}


def submit_id(client: httpx.Client, headers: dict[str, str]) -> str:
    answer = post(client, body(), headers=headers)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def test_every_log_line_of_a_request_carries_its_id(redis_server: RedisServer, tmp_path: Path) -> None:
    api = Api(redis_server.url, unique_prefix("rid"), tmp_path).start()
    try:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            assert post(http, body(), headers={"X-Request-ID": "rid-for-the-log"}).status_code == 202
    finally:
        api.stop()
    lines = [json.loads(line) for line in api.child.log().splitlines() if line.startswith("{")]
    queued = [line for line in lines if line["msg"] == "render queued"]
    assert queued and queued[0]["request_id"] == "rid-for-the-log", lines
    assert "job" in queued[0]  # the fields of the line stay


def test_listing_shows_only_the_tokens_own_jobs(redis_server: RedisServer, tmp_path: Path) -> None:
    prefix = unique_prefix("owners")  # one deployment's keys, read by an API with and one without a token
    open_api = Api(redis_server.url, prefix, tmp_path).start()
    token_api = Api(redis_server.url, prefix, tmp_path, api_token="mine").start()
    try:
        with (
            httpx.Client(base_url=open_api.url, timeout=10) as anyone,
            httpx.Client(base_url=token_api.url, timeout=10, headers={"Authorization": "Bearer mine"}) as owner,
        ):
            public_job = submit_id(anyone, {})
            own_job = submit_id(owner, {})
            assert [j["id"] for j in owner.get("/v1/renders").json()["items"]] == [own_job]
            assert [j["id"] for j in anyone.get("/v1/renders").json()["items"]] == [public_job]
    finally:
        open_api.stop()
        token_api.stop()
