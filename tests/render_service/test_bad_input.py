"""Every bad input gets a 4xx whose detail says what was wrong (API process only, no worker)."""

from __future__ import annotations

import copy
import json
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
