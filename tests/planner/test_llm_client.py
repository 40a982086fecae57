"""The OpenAI-compatible client: the grammar field per server kind, streaming, failures."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from planner_service.llm.client import LLMError, LLMUnavailable, OpenAIClient, SamplingParams, grammar_fields
from tests.support import free_port

PARAMS = SamplingParams(temperature=0.6, top_p=0.9, max_tokens=64, seed=3)
MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
GRAMMAR = 'root ::= "x"'

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_grammar_field_shapes() -> None:
    assert grammar_fields("llamacpp", GRAMMAR) == {"grammar": GRAMMAR}
    assert grammar_fields("vllm", GRAMMAR) == {"structured_outputs": {"grammar": GRAMMAR}}
    assert grammar_fields("none", GRAMMAR) == {}
    assert grammar_fields("vllm", None) == {}


def _answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1},
        },
    )


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("llamacpp", {"grammar": GRAMMAR}),
        ("vllm", {"structured_outputs": {"grammar": GRAMMAR}}),
        ("none", {}),
    ],
)
async def test_request_body_carries_the_grammar_where_the_server_kind_reads_it(kind, expected) -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return _answer(request)

    client = OpenAIClient("http://llm/v1", model="m", kind=kind, transport=httpx.MockTransport(handler))
    completion = await client.complete(MESSAGES, PARAMS, GRAMMAR)
    await client.aclose()
    body = seen[0]
    assert completion.text == "hi" and completion.completion_tokens == 1
    assert {k: body[k] for k in ("grammar", "structured_outputs") if k in body} == expected
    assert body["model"] == "m" and body["messages"] == MESSAGES
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.6, 0.9, 64, 3)
    assert "guided_grammar" not in body  # removed in vLLM 0.12
    assert "frequency_penalty" not in body  # only sent when set


def test_frequency_penalty_is_sent_when_set() -> None:
    client = OpenAIClient("http://llm/v1")
    params = SamplingParams(temperature=0.6, top_p=0.9, max_tokens=64, seed=3, frequency_penalty=0.3)
    assert client.body(MESSAGES, params, None, stream=False)["frequency_penalty"] == 0.3


async def test_streaming_yields_deltas_and_usage() -> None:
    chunks = [
        {"choices": [{"delta": {"role": "assistant"}}]},
        {"choices": [{"delta": {"content": "can"}}]},
        {"choices": [{"delta": {"content": "vas"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
    ]
    stream_body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, text=stream_body, headers={"content-type": "text/event-stream"})

    client = OpenAIClient("http://llm/v1", transport=httpx.MockTransport(handler))
    stream = await client.stream(MESSAGES, PARAMS, None)
    assert [d async for d in stream.deltas()] == ["can", "vas"]
    assert stream.completion.text == "canvas"
    assert (stream.completion.prompt_tokens, stream.completion.completion_tokens) == (7, 2)
    assert stream.completion.finish_reason == "stop"
    await client.aclose()


async def test_error_answer_is_llm_error() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(400, json={"error": {"message": "bad grammar"}}))
    client = OpenAIClient("http://llm/v1", transport=transport)
    with pytest.raises(LLMError, match="bad grammar"):
        await client.complete(MESSAGES, PARAMS, GRAMMAR)
    await client.aclose()


async def test_connect_errors_are_retried_then_unavailable() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("refused")
        return _answer(request)

    client = OpenAIClient("http://llm/v1", connect_retries=3, transport=httpx.MockTransport(handler))
    assert (await client.complete(MESSAGES, PARAMS, None)).text == "hi"
    assert len(calls) == 3
    await client.aclose()


async def test_unreachable_server_fails_fast() -> None:
    client = OpenAIClient(f"http://127.0.0.1:{free_port()}/v1", connect_timeout=1.0, connect_retries=3)
    started = time.monotonic()
    with pytest.raises(LLMUnavailable, match="unreachable after 3 attempts"):
        await client.complete(MESSAGES, PARAMS, None)
    assert time.monotonic() - started < 5
    await client.aclose()
