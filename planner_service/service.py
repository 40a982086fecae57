"""One plan request end to end: load the conversation, plan, save the new turns, count it.

Shared by ``POST /v1/plans`` (plain and streamed) and ``POST /v1/generations``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from planner_service.conversations import ConversationStore, StoreUnavailable
from planner_service.llm.client import LLMUnavailable
from planner_service.metrics import PlannerMetrics
from planner_service.planning import PlanFailed, PlanInput, Planner, PlanOutcome, failure_cause
from planner_service.prompting import previous_canvas, with_canvas
from planner_service.schemas import PlanRequest, PlanResponse
from shared.canvas import Canvas
from shared.canvas_diff import diff_canvases
from shared.plans import CanvasChanges, ChatTurn, CorrectionOut, PlanDelta, PlanRetry, Usage
from shared.service.auth import Caller

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    plan_input: PlanInput
    conversation_id: str | None
    caller: Caller
    turns: list[ChatTurn]
    started: float
    previous: Canvas | None


class PlanService:
    def __init__(self, planner: Planner, store: ConversationStore, metrics: PlannerMetrics) -> None:
        self.planner = planner
        self.store = store
        self.metrics = metrics

    async def _prepare(self, request: PlanRequest, caller: Caller) -> _Prepared:
        started = time.perf_counter()
        history = request.history
        if request.conversation_id:
            history = await self.store.get(request.conversation_id, caller)
        plan_input = PlanInput(
            prompt=request.prompt,
            history=history,
            canvas=request.canvas,
            seed=request.seed,
            temperature=request.temperature,
            top_p=request.top_p,
            max_new_tokens=request.max_new_tokens,
        )
        # Validate the context budget now, so an oversized request is a 400 before any LLM work.
        self.planner.messages(plan_input)
        turns = with_canvas(history, request.canvas)
        return _Prepared(plan_input, request.conversation_id, caller, turns, started, previous_canvas(turns))

    async def _finish(self, prepared: _Prepared, outcome: PlanOutcome) -> PlanResponse:
        new_id = prepared.conversation_id or self.store.new_id()
        conversation_id: str | None = new_id
        turns = [
            *prepared.turns,
            ChatTurn(role="user", content=prepared.plan_input.prompt),
            ChatTurn(role="assistant", content=outcome.code),
        ]
        try:
            await self.store.save(new_id, turns, prepared.caller.owner)
        except StoreUnavailable:
            if prepared.conversation_id:
                raise  # the caller asked to continue a conversation: losing it silently would be wrong
            log.warning("conversation not stored: Redis unavailable")
            conversation_id = None
        self.metrics.plans.labels("ok").inc()
        self.metrics.latency.observe(time.perf_counter() - prepared.started)
        return PlanResponse(
            canvas=outcome.parsed.canvas,
            code=outcome.code,
            corrections=[CorrectionOut(**vars(c)) for c in outcome.parsed.corrections],
            conversation_id=conversation_id,
            usage=Usage(prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens),
            timings=outcome.timings,
            attempts=outcome.attempts,
            truncated=outcome.truncated,
            changes=self._changes(prepared, outcome),
        )

    @staticmethod
    def _changes(prepared: _Prepared, outcome: PlanOutcome) -> CanvasChanges | None:
        if prepared.previous is None:
            return None
        return diff_canvases(prepared.previous, outcome.parsed.canvas, outcome.pairs)

    def _count_failure(self, exc: Exception) -> None:
        outcome = "parse_failed" if isinstance(exc, PlanFailed) else "unavailable"
        outcome = outcome if isinstance(exc, PlanFailed | LLMUnavailable) else "error"
        self.metrics.plans.labels(outcome).inc()
        self.metrics.failures.labels(failure_cause(exc)).inc()

    async def plan(self, request: PlanRequest, caller: Caller) -> PlanResponse:
        """Plan for ``caller``, who may continue only a conversation it may see (and owns the new one)."""
        prepared = await self._prepare(request, caller)
        try:
            outcome = await self.planner.plan(prepared.plan_input)
        except Exception as exc:
            self._count_failure(exc)
            raise
        return await self._finish(prepared, outcome)

    async def stream(
        self, request: PlanRequest, caller: Caller
    ) -> AsyncGenerator[PlanDelta | PlanRetry | PlanResponse, None]:
        """The stream's events (``shared.plans``): deltas and retries, then the ``PlanResponse``;
        failures raise (the router turns them into the ``error`` event)."""
        prepared = await self._prepare(request, caller)
        events = self.planner.stream(prepared.plan_input)
        try:
            async for event in events:
                yield await self._finish(prepared, event) if isinstance(event, PlanOutcome) else event
        except Exception as exc:
            self._count_failure(exc)
            raise
        finally:
            await events.aclose()
