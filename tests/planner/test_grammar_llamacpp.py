"""The Omost grammar in llama.cpp (the embedded server): it compiles both profiles, rejects a broken
grammar, and what it lets SmolLM2 write is also in xgrammar's reading of the same grammar."""

from __future__ import annotations

import httpx
import pytest

from planner_service.llm.embedded import EmbeddedLlamaServer
from shared.contract import SYSTEM_PROMPT
from shared.grammar import PROFILES, omost_grammar

xgrammar = pytest.importorskip("xgrammar")


def complete(server: EmbeddedLlamaServer, grammar: str, max_tokens: int) -> httpx.Response:
    body = {
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "a red apple"}],
        "max_tokens": max_tokens,
        "temperature": 0.6,
        "top_p": 0.9,
        "seed": 11,
        "grammar": grammar,
    }
    return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=300)


def test_llamacpp_rejects_a_broken_grammar(llm_server: EmbeddedLlamaServer) -> None:
    response = complete(llm_server, 'root ::= "unterminated', 4)
    assert response.status_code == 400
    assert "grammar" in response.text


@pytest.mark.parametrize("profile", PROFILES)
def test_llamacpp_decodes_with_the_grammar_and_xgrammar_agrees(llm_server: EmbeddedLlamaServer, profile) -> None:
    grammar = omost_grammar(profile)
    response = complete(llm_server, grammar, 48)
    assert response.status_code == 200, response.text
    text = response.json()["choices"][0]["message"]["content"]
    assert text.startswith("```") or text.startswith("canvas") or text.startswith("#")
    compiled = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), cache_enabled=False).compile_grammar(grammar)
    matcher = xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)
    assert matcher.accept_string(text), text  # a prefix of the same language
