"""Prompt -> LLM -> code -> canvas, with new-seed retries when the answer does not parse.

The model's text is only ever *parsed* (``shared.omost_code``), never executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span

from planner_service.conversations import StoreUnavailable
from planner_service.edits import Patch, plan_patch
from planner_service.llm.client import (
    ChatStream,
    Completion,
    LLMError,
    LLMUnavailable,
    OpenAIClient,
    SamplingParams,
)
from planner_service.metrics import PlannerMetrics
from planner_service.prompting import build_messages, previous_canvas, with_canvas
from planner_service.settings import PlannerSettings
from planner_service.subjects import distinct_subjects, noun_phrases, prompt_style, prompt_tags, word_forms
from shared.canvas import Canvas
from shared.grammar import ContentLimits, Profile, RegionShape, omost_grammar
from shared.jobs import MAX_SEED
from shared.omost_code import CanvasParseError, ParseResult, canvas_to_code, parse_canvas_code
from shared.plans import ChatTurn, PlanDelta, PlanRetry
from shared.service.tracing import record_error, tracer

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


MAX_SUBJECT_REGIONS = 8
"""Long scenes name more subjects than the strict profile's default of 6 regions."""
SHAPED_LIMITS = ContentLimits(
    min_regions=0,
    max_regions=MAX_SUBJECT_REGIONS,
    max_detailed_descriptions=2,
    max_region_details=1,
    description_words=12,
    text_words=28,
    phrase_words=14,
    max_tags=16,
    comment_chars=0,
)
"""A per-request grammar asks for a region per subject (2-3 times the regions SmolLM2 writes on its
own: measured, 1.45x the tokens of a fresh plan), so each region says less: one detail, lengths no
longer than Omost's own (descriptions ~10 words, details ~28, atmosphere/style/quality 6-14), no
comments. Applies to the strict-content profile only (the permissive one bounds no content)."""
_LETTERS = re.compile("[A-Za-z]+")
PROMPT_TAGS = 12
"""The global tags open with up to this many of the prompt's own words (``prompt_tags``)."""


@dataclass(frozen=True)
class AnswerConstraints:
    """What constrains one request: its grammar, and for an edit made as a patch, the patch and the
    canvas it applies to."""

    grammar: str | None
    patch: Patch | None = None
    previous: Canvas | None = None
    banned_words: tuple[str, ...] = ()
    """Spellings of what the prompt negates or the edit takes out: the model may not write them."""


class PlanTimedOut(Exception):
    """The plan ran past ``plan_timeout_seconds`` with nothing to hand back."""

    http_status = 504

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the plan took longer than {seconds:g} s (OMOST_PLANNER_PLAN_TIMEOUT_SECONDS) and was stopped; "
            "ask for fewer max_new_tokens, stream it (a streamed plan past the limit yields its complete calls), "
            "or retry when the LLM is less busy"
        )


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
    pairs: dict[int, int] | None = None
    """For an edit made as a patch: new region index -> previous index (see ``shared.canvas_diff``)."""


PlannerEvent = PlanDelta | PlanRetry | PlanOutcome
"""What :meth:`Planner.stream` yields: the contract's stream events, then the outcome (the service
turns it into the contract's ``PlanResult``)."""


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

    def constraints(self, request: PlanInput) -> AnswerConstraints:
        """The request's grammar: the profile's own, or (subject constraints on) a per-request one."""
        if self.grammar is None or not self.settings.use_subject_constraints:
            return AnswerConstraints(self.grammar)
        try:
            return self._subject_constraints(request)
        except ValueError:  # an opening the grammar cannot hold: no worse off than without constraints
            return AnswerConstraints(self.grammar)

    def _subject_constraints(self, request: PlanInput) -> AnswerConstraints:
        profile = self.settings.resolved_profile
        previous = previous_canvas(with_canvas(request.history, request.canvas))
        if previous is not None:
            patch = plan_patch(request.prompt, previous, MAX_SUBJECT_REGIONS)
            if patch is None:
                return AnswerConstraints(self.grammar)
            grammar = self._subject_grammar(profile, patch.shapes)
            return AnswerConstraints(grammar, patch, previous, _spellings(patch.gone))
        phrases, negated = noun_phrases(request.prompt)
        subjects = distinct_subjects(phrases, MAX_SUBJECT_REGIONS)
        if not subjects:
            return AnswerConstraints(self.grammar, banned_words=_spellings(negated))
        # One subject per region: each description opens with its subject and names no other one.
        shapes = tuple(
            RegionShape(_capitalised(s.phrase), excluded=_excludable(o.head for o in subjects if o.head != s.head))
            for s in subjects
        )
        tags = tuple(prompt_tags(request.prompt, limit=PROMPT_TAGS))
        grammar = self._subject_grammar(profile, shapes, tags, prompt_style(request.prompt))
        return AnswerConstraints(grammar, banned_words=_spellings(negated))

    @staticmethod
    def _subject_grammar(
        profile: Profile, shapes: tuple[RegionShape, ...], global_tags: tuple[str, ...] = (), style: str | None = None
    ) -> str:
        return omost_grammar(
            profile,
            limits=SHAPED_LIMITS,
            max_regions=MAX_SUBJECT_REGIONS,
            regions=shapes,
            global_tags=global_tags,
            region_style=style,
        )

    def _max_tokens(self, request: PlanInput) -> int:
        return request.max_new_tokens or self.settings.default_max_new_tokens

    def _params(self, request: PlanInput, attempt: int, seed: int, banned_words: tuple[str, ...]) -> SamplingParams:
        s = self.settings
        return SamplingParams(
            temperature=s.temperature if request.temperature is None else request.temperature,
            top_p=s.top_p if request.top_p is None else request.top_p,
            max_tokens=self._max_tokens(request),
            seed=(seed + attempt * 7919) % MAX_SEED,  # a new seed per retry, reproducible from the first
            # An edit should copy most of the previous canvas: a repetition penalty fights exactly
            # that (measured: SmolLM2 then dropped the untouched regions), so it is for fresh plans only.
            frequency_penalty=0.0 if _is_edit(request) else s.resolved_frequency_penalty,
            banned_words=banned_words,
        )

    @property
    def attempts(self) -> int:
        return 1 + self.settings.max_retries

    def _parse(self, completion: Completion, constraints: AnswerConstraints) -> tuple[ParseResult, str, bool]:
        parsed = parse_canvas_code(completion.text, allow_partial=self.settings.accept_truncated)
        truncated = parsed.truncated or completion.finish_reason == "length"
        if constraints.patch is not None and constraints.previous is not None:
            # The model wrote the global description and the changed regions only: merge them.
            merged = constraints.patch.merge(constraints.previous, parsed.canvas)
            return ParseResult(merged, parsed.corrections, parsed.truncated), canvas_to_code(merged), truncated
        # A cut-off answer is not code the model would write; hand back the canvas's clean form.
        code = canvas_to_code(parsed.canvas) if parsed.truncated else completion.text
        return parsed, code, truncated

    def _outcome(
        self,
        parsed: ParseResult,
        code: str,
        truncated: bool,
        attempt: int,
        tally: _Tally,
        constraints: AnswerConstraints,
    ) -> PlanOutcome:
        total = time.perf_counter() - tally.started
        last = tally.last
        rate = last.tokens_per_second if last else 0.0
        timings = {
            "total_ms": round(total * 1000, 1),
            "llm_ms": round(tally.llm_seconds * 1000, 1),
            "overhead_ms": round((total - tally.llm_seconds) * 1000, 1),
            "tokens_per_second": round(rate, 2),
        }
        if last is not None and last.first_token_seconds is not None:
            timings["first_token_ms"] = round(last.first_token_seconds * 1000, 1)
        pairs = constraints.patch.pairs(constraints.previous) if constraints.patch and constraints.previous else None
        tokens = tally.prompt_tokens, tally.completion_tokens
        return PlanOutcome(parsed, code, truncated, attempt + 1, *tokens, timings, pairs)

    def _count_call(self, completion: Completion) -> None:
        """Every LLM call, failed parses included, so tokens/s covers all the LLM's work."""
        self.metrics.completion_tokens.inc(completion.completion_tokens)
        self.metrics.llm_seconds.observe(completion.seconds)
        if completion.tokens_per_second:
            self.metrics.tokens_per_second.observe(completion.tokens_per_second)

    def _failed(self, error: CanvasParseError, attempt: int) -> None:
        self.metrics.parse_failures.inc()
        if attempt + 1 < self.attempts:
            self.metrics.retries.inc()

    async def plan(self, request: PlanInput) -> PlanOutcome:
        async with contextlib.aclosing(self._attempts(request, streamed=False)) as events:
            async for event in events:
                if isinstance(event, PlanOutcome):
                    return event
        raise AssertionError("unreachable: the attempts end with a plan or raise")

    def stream(self, request: PlanInput) -> AsyncGenerator[PlannerEvent, None]:
        """:class:`PlanDelta` and :class:`PlanRetry` events, then the :class:`PlanOutcome`; raises
        :class:`PlanFailed` and the client's errors like :meth:`plan`."""
        return self._attempts(request, streamed=True)

    async def _attempts(self, request: PlanInput, *, streamed: bool) -> AsyncGenerator[PlannerEvent, None]:
        """Both :meth:`plan` and :meth:`stream`, in one ``plan`` span (the LLM calls are its children).

        The span is made current only around each LLM call, never across a ``yield``: the consumer of
        a stream may resume this generator from another context."""
        span = tracer.start_span("plan", attributes=self._span_attributes(request, streamed))
        try:
            async for event in self._tries(request, streamed=streamed, span=span):
                if isinstance(event, PlanOutcome):
                    span.set_attributes(_outcome_attributes(event))
                yield event
        except Exception as exc:
            record_error(span, exc, failure_cause(exc))
            raise
        finally:
            span.end()

    def _span_attributes(self, request: PlanInput, streamed: bool) -> dict[str, Any]:
        return {
            "omost.plan.grammar_profile": self.settings.resolved_profile if self.grammar else "none",
            "omost.plan.max_tokens": self._max_tokens(request),
            "omost.plan.streamed": streamed,
            "omost.plan.edit": _is_edit(request),
        }

    async def _tries(self, request: PlanInput, *, streamed: bool, span: Span) -> AsyncGenerator[PlannerEvent, None]:
        """Ask, parse, retry on a parse failure. Only a streamed completion yields :class:`PlanDelta` events."""
        messages = self.messages(request)
        constraints = self.constraints(request)
        seed = request.seed if request.seed is not None else random.randrange(MAX_SEED)
        tally = _Tally()
        error: CanvasParseError | None = None
        limit = self.settings.plan_timeout_seconds
        deadline = time.monotonic() + limit
        for attempt in range(self.attempts):
            params = self._params(request, attempt, seed, constraints.banned_words)
            if streamed:
                with trace.use_span(span, end_on_exit=False):
                    stream: ChatStream = await self.client.stream(messages, params, constraints.grammar)
                async for text in stream.deltas(deadline=deadline):
                    yield PlanDelta(text=text)
                completion = stream.completion
            else:
                try:
                    with trace.use_span(span, end_on_exit=False):
                        completion = await asyncio.wait_for(
                            self.client.complete(messages, params, constraints.grammar), deadline - time.monotonic()
                        )
                except TimeoutError:  # the request is closed: the LLM server stops generating for it
                    raise PlanTimedOut(limit) from None
            tally.add(completion)
            self._count_call(completion)
            try:
                parsed, code, truncated = self._parse(completion, constraints)
            except CanvasParseError as exc:
                error = exc
                self._failed(exc, attempt)
                span.add_event("parse failed", {"omost.plan.attempt": attempt + 1, "omost.error": str(exc)[:500]})
                if time.monotonic() >= deadline:
                    raise PlanTimedOut(limit) from None
                if attempt + 1 < self.attempts:
                    yield PlanRetry(attempt=attempt + 2, error=str(exc))
                continue
            yield self._outcome(parsed, code, truncated, attempt, tally, constraints)
            return
        assert error is not None and tally.last is not None
        raise PlanFailed(error, tally.last.text, self.attempts)


def _outcome_attributes(outcome: PlanOutcome) -> dict[str, Any]:
    return {
        "omost.plan.attempts": outcome.attempts,
        "omost.plan.prompt_tokens": outcome.prompt_tokens,
        "omost.plan.completion_tokens": outcome.completion_tokens,
        "omost.plan.truncated": outcome.truncated,
        "omost.plan.regions": len(outcome.parsed.canvas.local_descriptions),
    }


def failure_cause(exc: Exception) -> str:
    """The ``cause`` label of ``omost_planner_plan_failures_total`` (one of ``metrics.FAILURE_CAUSES``),
    and the problem type on a failed ``plan`` span."""
    if isinstance(exc, PlanFailed):
        return "parse_failed"
    if isinstance(exc, LLMUnavailable):
        return "llm_unavailable"
    if isinstance(exc, LLMError):
        return "llm_error"
    if isinstance(exc, StoreUnavailable):
        return "store_unavailable"
    return "other"


def _spellings(words: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(form for word in sorted(words) for form in word_forms(word)))


def _excludable(words: Iterable[str]) -> tuple[str, ...]:
    """The spellings of ``words`` a grammar can exclude (ASCII letters: an English prompt's nouns)."""
    return tuple(form for form in _spellings(words) if _LETTERS.fullmatch(form))


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]
