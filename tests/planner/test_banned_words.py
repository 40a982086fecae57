"""Banned words (a removed or negated subject) reach the LLM server in the form it reads: token ids
in llama.cpp's ``logit_bias`` (tokenized by the real SmolLM2 server), words in vLLM's ``bad_words``."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from planner_service.llm.client import OpenAIClient, SamplingParams
from planner_service.llm.embedded import EmbeddedLlamaServer

pytestmark = pytest.mark.anyio
CAT = ("cat", "cats", "Cat", "Cats")
MESSAGES = [{"role": "user", "content": "Describe a cat sitting on a mat, in two sentences."}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_llamacpp_bans_the_single_token_spellings(llm_server: EmbeddedLlamaServer) -> None:
    client = OpenAIClient(llm_server.base_url, kind="llamacpp")
    try:
        fields = await client.ban_fields(("cat", "vases"))
        ids = {token for token, allowed in fields["logit_bias"]}
        single = {(await client._tokenize(text))[0] for text in ("cat", " cat")}
        assert single <= ids and all(allowed is False for _, allowed in fields["logit_bias"])
        # " vases" is " v" + "ases" in SmolLM2's vocabulary: banning " v" would ban it everywhere.
        assert len(await client._tokenize(" vases")) > 1
        assert not set(await client._tokenize(" vases")) & ids
        assert await client.ban_fields(()) == {}
    finally:
        await client.aclose()


async def test_a_banned_word_is_not_written(llm_server: EmbeddedLlamaServer) -> None:
    client = OpenAIClient(llm_server.base_url, kind="llamacpp")
    cat = re.compile(r"\bcats?\b", re.IGNORECASE)
    try:
        free = await client.complete(MESSAGES, SamplingParams(0.0, 1.0, 40, seed=1), None)
        banned = await client.complete(MESSAGES, SamplingParams(0.0, 1.0, 40, seed=1, banned_words=CAT), None)
    finally:
        await client.aclose()
    assert cat.search(free.text), free.text  # the model writes it when free to
    assert not cat.search(banned.text), banned.text


@pytest.mark.parametrize(("kind", "expected"), [("vllm", {"bad_words": list(CAT)}), ("none", {})])
async def test_other_servers(kind, expected) -> None:
    # The body for each kind; tests/planner/test_vllm_real.py sees a real vLLM log the bad_words it got.
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]})

    client = OpenAIClient("http://llm/v1", kind=kind, transport=httpx.MockTransport(handler))
    await client.complete(MESSAGES, SamplingParams(0.6, 0.9, 8, seed=1, banned_words=CAT), None)
    await client.aclose()
    assert {k: seen[0][k] for k in ("bad_words", "logit_bias") if k in seen[0]} == expected


async def test_a_server_without_tokenize_plans_without_the_ban() -> None:
    # A llama.cpp-like server that answers 404 to /tokenize (an Ollama, a proxy): faked, since the
    # real llama.cpp server has the endpoint. The plan still goes out, without logit_bias.
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            return httpx.Response(404, text="not found")
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]})

    client = OpenAIClient("http://llm/v1", kind="llamacpp", transport=httpx.MockTransport(handler))
    completion = await client.complete(MESSAGES, SamplingParams(0.6, 0.9, 8, seed=1, banned_words=CAT), None)
    await client.aclose()
    assert completion.text == "hi" and "logit_bias" not in seen[0]
