"""The chat sent to the LLM: Omost's system prompt, the example, the turns, trimming."""

from __future__ import annotations

import pytest

from planner_service.prompting import (
    EDIT_LEAD_IN,
    PromptTooLong,
    build_messages,
    estimate_tokens,
    one_shot_example,
)
from shared.contract import SYSTEM_PROMPT
from shared.grammar import omost_grammar
from shared.omost_code import canvas_to_code, parse_canvas_code
from shared.plans import ChatTurn
from tests.planner.test_plans_real import EDITED


def build(prompt: str = "a cat", **options):
    defaults = {"history": [], "canvas": None, "one_shot": False, "context_tokens": 8192, "max_new_tokens": 4096}
    return build_messages(prompt, **{**defaults, **options})


def test_system_prompt_is_omosts_verbatim_and_the_prompt_comes_last() -> None:
    messages, dropped = build("a cat")
    assert messages == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "a cat"}]
    assert dropped == 0


def test_one_shot_example_is_a_real_omost_answer_that_fits_the_strict_grammar() -> None:
    example = one_shot_example()
    canvas = parse_canvas_code(example.code).canvas
    assert len(canvas.local_descriptions) == 2
    messages, _ = build("a cat", one_shot=True)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == example.code
    xgrammar = pytest.importorskip("xgrammar")
    compiled = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([])).compile_grammar(omost_grammar("strict-content"))
    matcher = xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)
    assert matcher.accept_string(example.code) and matcher.is_terminated()


def test_canvas_is_the_previous_assistant_turn_in_code_form() -> None:
    messages, _ = build("make the dog a corgi", canvas=EDITED, one_shot=True)
    assert messages[-3:] == [
        {"role": "user", "content": EDIT_LEAD_IN},
        {"role": "assistant", "content": canvas_to_code(EDITED)},
        {"role": "user", "content": "make the dog a corgi"},
    ]
    assert len(messages) == 4  # no example once the conversation has code of its own


def test_canvas_replaces_the_last_assistant_turn_of_the_history() -> None:
    history = [ChatTurn(role="user", content="a cat and a dog"), ChatTurn(role="assistant", content="old code")]
    messages, _ = build("make the dog a corgi", history=history, canvas=EDITED)
    assert [m["content"] for m in messages[1:]] == ["a cat and a dog", canvas_to_code(EDITED), "make the dog a corgi"]


def test_history_is_trimmed_from_the_oldest_turns() -> None:
    code = canvas_to_code(EDITED)
    history = []
    for index in range(12):
        history += [ChatTurn(role="user", content=f"turn {index}"), ChatTurn(role="assistant", content=code)]
    messages, dropped = build("last", history=history, context_tokens=4096, max_new_tokens=1024)
    assert dropped > 0
    assert messages[0]["role"] == "system" and messages[1]["role"] == "user"
    assert messages[-1]["content"] == "last" and messages[-3]["content"] == "turn 11"
    assert sum(estimate_tokens(m["content"]) for m in messages) <= 4096 - 1024
    kept = [m["content"] for m in messages if m["content"].startswith("turn")]
    assert kept == [f"turn {i}" for i in range(12 - len(kept), 12)]


def test_request_that_cannot_fit_is_refused() -> None:
    with pytest.raises(PromptTooLong, match="max_new_tokens"):
        build("x" * 4000, context_tokens=1024, max_new_tokens=512)


def test_example_is_dropped_when_it_does_not_fit() -> None:
    messages, dropped = build("x" * 1200, one_shot=True, context_tokens=2048, max_new_tokens=512)
    assert dropped == 0
    assert [m["role"] for m in messages] == ["system", "user"]
