"""Prompt -> LLM -> code -> canvas, with new-seed retries when the answer does not parse.

The model's text is only ever *parsed* (``shared.omost_code``), never executed.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from planner_service.llm.client import ChatStream, Completion, OpenAIClient, SamplingParams
from planner_service.metrics import PlannerMetrics
from planner_service.prompting import build_messages
from planner_service.settings import PlannerSettings
from shared.canvas import Canvas
from shared.grammar import omost_grammar
from shared.jobs import MAX_SEED
from shared.omost_code import CanvasParseError, ParseResult, canvas_to_code, parse_canvas_code
from shared.plans import ChatTurn

# One seed range for the whole system (shared.jobs). llama.cpp's seed is a uint32 whose top value
# 0xFFFFFFFF means "pick one at random", so plans draw from [0, MAX_SEED).


@dataclass(frozen=True)
class PlanInput:
    prompt: str
    history: list[ChatTurn] = field(default_factory=list)
    canvas: Canvas | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None


def _is_edit(request: PlanInput) -> bool:
    return request.canvas is not None or any(turn.role == "assistant" for turn in request.history)


class PlanFailed(Exception):
    """Every attempt produced text that is not a canvas."""

    http_status = 502

    def __init__(self, error: CanvasParseError, raw: str, attempts: int) -> None:
        super().__init__(f"the LLM's answer did not parse into a canvas after {attempts} attempt(s): {error}")
        self.error = error
        self.raw = raw
        self.attempts = attempts

    def problem_extensions(self) -> dict[str, object]:
        """Extra members of the 502 problem: where the text failed to parse, and the text."""
        error = self.error
        return {
            "parse_error": {"message": error.message, "line": error.line, "column": error.column},
            "raw": self.raw,
            "attempts": self.attempts,
        }


@dataclass
class PlanOutcome:
    parsed: ParseResult
    code: str
    truncated: bool
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float]


@dataclass
class _Tally:
    started: float = field(default_factory=time.perf_counter)
    llm_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last: Completion | None = None

    def add(self, completion: Completion) -> None:
        self.llm_seconds += completion.seconds
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.last = completion


class Planner:
    def __init__(self, client: OpenAIClient, settings: PlannerSettings, metrics: PlannerMetrics) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.grammar: str | None = None
        if settings.grammar_kind != "none":
            self.grammar = omost_grammar(settings.resolved_profile)

    def messages(self, request: PlanInput) -> list[dict[str, str]]:
        messages, _ = build_messages(
            request.prompt,
            history=request.history,
            canvas=request.canvas,
            one_shot=self.settings.use_one_shot,
            context_tokens=self.settings.context_tokens,
            max_new_tokens=self._max_tokens(request),
        )
        return messages

    def _max_tokens(self, request: PlanInput) -> int:
        return request.max_new_tokens or self.settings.max_new_tokens

    def _params(self, request: PlanInput, attempt: int, seed: int) -> SamplingParams:
        s = self.settings
        return SamplingParams(
            temperature=s.temperature if request.temperature is None else request.temperature,
            top_p=s.top_p if request.top_p is None else request.top_p,
            max_tokens=self._max_tokens(request),
            seed=(seed + attempt * 7919) % MAX_SEED,  # a new seed per retry, reproducible from the first
            # An edit should copy most of the previous canvas: a repetition penalty fights exactly
            # that (measured: SmolLM2 then dropped the untouched regions), so it is for fresh plans only.
            frequency_penalty=0.0 if _is_edit(request) else s.resolved_frequency_penalty,
        )

    @property
    def attempts(self) -> int:
        return 1 + self.settings.max_retries

    def _parse(self, completion: Completion) -> tuple[ParseResult, str, bool]:
        parsed = parse_canvas_code(completion.text, allow_partial=self.settings.accept_truncated)
        truncated = parsed.truncated or completion.finish_reason == "length"
        # A cut-off answer is not code the model would write; hand back the canvas's clean form.
        code = canvas_to_code(parsed.canvas) if parsed.truncated else completion.text
        return parsed, code, truncated

    def _outcome(self, parsed: ParseResult, code: str, truncated: bool, attempt: int, tally: _Tally) -> PlanOutcome:
        total = time.perf_counter() - tally.started
        last = tally.last
        rate = last.tokens_per_second if last else 0.0
        if last is not None:
            self.metrics.completion_tokens.inc(tally.completion_tokens)
            if rate:
                self.metrics.tokens_per_second.observe(rate)
        timings = {
            "total_ms": round(total * 1000, 1),
            "llm_ms": round(tally.llm_seconds * 1000, 1),
            "overhead_ms": round((total - tally.llm_seconds) * 1000, 1),
            "tokens_per_second": round(rate, 2),
        }
        if last is not None and last.first_token_seconds is not None:
            timings["first_token_ms"] = round(last.first_token_seconds * 1000, 1)
        return PlanOutcome(parsed, code, truncated, attempt + 1, tally.prompt_tokens, tally.completion_tokens, timings)

    def _failed(self, error: CanvasParseError, attempt: int) -> None:
        self.metrics.parse_failures.inc()
        if attempt + 1 < self.attempts:
            self.metrics.retries.inc()

    async def plan(self, request: PlanInput) -> PlanOutcome:
        messages = self.messages(request)
        seed = request.seed if request.seed is not None else random.randrange(MAX_SEED)
        tally = _Tally()
        error: CanvasParseError | None = None
        for attempt in range(self.attempts):
            completion = await self.client.complete(messages, self._params(request, attempt, seed), self.grammar)
            tally.add(completion)
            try:
                parsed, code, truncated = self._parse(completion)
            except CanvasParseError as exc:
                error = exc
                self._failed(exc, attempt)
                continue
            return self._outcome(parsed, code, truncated, attempt, tally)
        assert error is not None and tally.last is not None
        raise PlanFailed(error, tally.last.text, self.attempts)

    async def stream(self, request: PlanInput) -> AsyncIterator[tuple[str, Any]]:
        """Events ``("delta", text)``, ``("retry", info)`` and finally ``("plan", PlanOutcome)``;
        raises :class:`PlanFailed` and the client's errors like :meth:`plan`."""
        messages = self.messages(request)
        seed = request.seed if request.seed is not None else random.randrange(MAX_SEED)
        tally = _Tally()
        error: CanvasParseError | None = None
        for attempt in range(self.attempts):
            stream: ChatStream = await self.client.stream(messages, self._params(request, attempt, seed), self.grammar)
            async for text in stream.deltas():
                yield "delta", text
            tally.add(stream.completion)
            try:
                parsed, code, truncated = self._parse(stream.completion)
            except CanvasParseError as exc:
                error = exc
                self._failed(exc, attempt)
                if attempt + 1 < self.attempts:
                    yield "retry", {"attempt": attempt + 2, "error": str(exc)}
                continue
            yield "plan", self._outcome(parsed, code, truncated, attempt, tally)
            return
        assert error is not None and tally.last is not None
        raise PlanFailed(error, tally.last.text, self.attempts)
