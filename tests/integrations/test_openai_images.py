"""The OpenAI-compatible Images API, driven by the official ``openai`` package exactly as an app
would, against the real stack (planner with SmolLM2, render worker with the tiny model)."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image

from shared.cli.stack import LocalStack
from tests.integrations.conftest import TOKEN

# Each image is a real plan by SmolLM2 on the CPU first: tens of seconds.
pytestmark = pytest.mark.slow


@pytest.fixture()
def client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.planner_url}/v1", api_key=TOKEN, timeout=300, max_retries=0)


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_two_b64_json_images_with_revised_prompt(client: OpenAI) -> None:
    # One plan serves b64_json, n=2, a custom size and the accepted-and-ignored parameters: each plan
    # costs tens of seconds on a CPU.
    result = client.images.generate(prompt="a cat on a sofa", n=2, size="96x64", response_format="b64_json",
                                    quality="hd", style="natural", user="test-user", model="dall-e-3")
    assert result.created > 0
    assert len(result.data) == 2
    assert all(image.url is None for image in result.data)
    first, second = (png(base64.b64decode(image.b64_json or "")) for image in result.data)
    assert first.size == second.size == (96, 64)
    assert first.tobytes() != second.tobytes()  # seeds s and s + 1
    assert result.data[0].revised_prompt  # the canvas's global description, never empty
    assert result.data[0].revised_prompt == result.data[1].revised_prompt


def test_url_images_are_fetchable_with_the_token(client: OpenAI, stack: LocalStack) -> None:
    result = client.images.generate(prompt="a lighthouse at night", size="auto", response_format="url")
    url = result.data[0].url or ""
    assert url.startswith(f"{stack.render_url}/v1/renders/")
    response = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 200
    assert png(response.content).size == (64, 64)  # "auto" is the configured default size


@pytest.mark.parametrize("size", ["1001x1000", "big", "64x4096", "32x32"])
def test_bad_size_is_a_400_in_openais_shape(client: OpenAI, size: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="a house", size=size)  # type: ignore[arg-type]
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == "size"
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_size"
    assert size in error["message"] or "WIDTHxHEIGHT" in error["message"]


def test_bad_n_names_the_parameter(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="a house", n=9)
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "n"


def test_wrong_token_is_a_401(stack: LocalStack) -> None:
    stranger = OpenAI(base_url=f"{stack.planner_url}/v1", api_key="wrong-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        stranger.images.generate(prompt="a house", size="64x64")
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


def test_missing_token_is_a_401_in_openais_shape(stack: LocalStack) -> None:
    # The SDK always sends a key, so a request without one is made by hand.
    response = httpx.post(f"{stack.planner_url}/v1/images/generations", json={"prompt": "a house"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "authentication_error"


def test_models_lists_the_served_model(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["omost"]


def test_a_model_no_worker_serves_is_a_400_before_any_plan(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="a house", model="flux-schnell")
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "model" and "no worker serves model 'flux-schnell'" in info.value.body["message"]


def test_other_routes_keep_their_own_error_shape(stack: LocalStack) -> None:
    response = httpx.post(f"{stack.planner_url}/v1/plans", json={"prompt": ""},
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 422
    assert "error" not in response.json() or not isinstance(response.json()["error"], dict)


def test_unknown_parameter_and_bad_json_are_400s(client: OpenAI, stack: LocalStack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="a house", extra_body={"colour": "red"})
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "colour"
    response = httpx.post(f"{stack.planner_url}/v1/images/generations", content=b"{not json",
                          headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
