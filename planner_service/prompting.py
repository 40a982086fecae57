"""The chat sent to the LLM, the way Omost builds it: its system prompt verbatim, an optional one-shot
example, the earlier turns (user words, assistant code), the canvas being edited, the new prompt.

The served model's chat template is applied by the server (vLLM, llama.cpp), so this module only
builds role/content messages. History is trimmed from the oldest turns to fit the context window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from shared.canvas import Canvas
from shared.contract import SYSTEM_PROMPT
from shared.omost_code import CanvasParseError, canvas_to_code, parse_canvas_code
from shared.plans import ChatTurn

EDIT_LEAD_IN = "Here is the current canvas."
"""The user turn placed before a given canvas when no history precedes it: chat templates expect
user and assistant turns to alternate."""

MESSAGE_OVERHEAD_TOKENS = 8
"""Role markers and separators a chat template adds per message."""


class PromptTooLong(ValueError):
    """Even with every earlier turn dropped, the request does not fit the context window."""

    http_status = 400


@dataclass(frozen=True)
class OneShot:
    prompt: str
    code: str


@cache
def one_shot_example() -> OneShot:
    """A real Omost answer, shortened (see ``one_shot.json``): shows a small model the form."""
    data = json.loads(resources.files("planner_service").joinpath("one_shot.json").read_text(encoding="utf-8"))
    return OneShot(prompt=data["prompt"], code=data["code"])


def estimate_tokens(text: str) -> int:
    """A deliberately high estimate (BPE tokenizers average about 4 characters a token on English
    and code; 3 leaves room for odd text) so trimming errs on the side of fitting."""
    return len(text) // 3 + MESSAGE_OVERHEAD_TOKENS


def _turns_to_messages(turns: list[ChatTurn]) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.content} for t in turns]


def with_canvas(history: list[ChatTurn], canvas: Canvas | None) -> list[ChatTurn]:
    """The turns with ``canvas`` as the assistant's last word, in the code form it would write."""
    turns = list(history)
    if canvas is None:
        return turns
    code = canvas_to_code(canvas)
    if turns and turns[-1].role == "assistant":
        turns[-1] = ChatTurn(role="assistant", content=code)
    else:
        turns += [ChatTurn(role="user", content=EDIT_LEAD_IN), ChatTurn(role="assistant", content=code)]
    return turns


def previous_canvas(turns: list[ChatTurn]) -> Canvas | None:
    """The canvas an edit starts from: the last assistant turn's code (stored turns always parse;
    inline history from a client might not, and then there is no canvas to start from)."""
    for turn in reversed(turns):
        if turn.role == "assistant":
            try:
                return parse_canvas_code(turn.content, allow_partial=True).canvas
            except CanvasParseError:
                return None
    return None


def build_messages(
    prompt: str,
    *,
    history: list[ChatTurn],
    canvas: Canvas | None,
    one_shot: bool,
    context_tokens: int,
    max_new_tokens: int,
) -> tuple[list[dict[str, str]], int]:
    """The messages and how many history turns were dropped to fit ``context_tokens``."""
    turns = with_canvas(history, canvas)
    head = [{"role": "system", "content": SYSTEM_PROMPT}]
    example: list[dict[str, str]] = []
    # Only before the conversation has code of its own: measured with SmolLM2, an example ahead of
    # a canvas to edit made the model rewrite from scratch, and without it the model kept regions.
    if one_shot and not any(t.role == "assistant" for t in turns):
        shot = one_shot_example()
        example = [{"role": "user", "content": shot.prompt}, {"role": "assistant", "content": shot.code}]
    tail = [{"role": "user", "content": prompt}]
    budget = context_tokens - max_new_tokens

    def size(messages: list[dict[str, str]]) -> int:
        return sum(estimate_tokens(m["content"]) for m in messages)

    dropped = 0
    keep = 2 if canvas is not None else 0  # never drop the canvas being edited (and its lead-in)
    while len(turns) > keep and size(head + example + _turns_to_messages(turns) + tail) > budget:
        turns.pop(0)
        dropped += 1
    if example and size(head + example + _turns_to_messages(turns) + tail) > budget:
        example = []  # the example helps, but the user's own conversation matters more
    messages = head + example + _turns_to_messages(turns) + tail
    if size(messages) > budget:
        raise PromptTooLong(
            f"the prompt and the canvas need about {size(messages)} tokens but only {budget} of the "
            f"{context_tokens}-token context are left after max_new_tokens={max_new_tokens}; "
            "shorten the prompt or lower max_new_tokens"
        )
    if turns and turns[0].role == "assistant":
        # Trimming can leave an assistant turn first; templates want a user turn after the system one.
        turns.pop(0)
        dropped += 1
        messages = head + example + _turns_to_messages(turns) + tail
    return messages, dropped
