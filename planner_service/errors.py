"""The planner's failures: a clear 4xx for the caller's mistakes, 502 for an LLM that answered
nonsense, 503 for one (or a store) that cannot be reached, 504 for a plan past its time limit. Each
exception carries its status (``http_status``); the wire format and the one handler live in
:mod:`shared.service.problems`."""

from __future__ import annotations

from typing import Any

from planner_service.admission import ClientGone, PlannerBusy, TooManyWaiting
from planner_service.conversations import ConversationNotFound, StoreUnavailable
from planner_service.llm.client import LLMError, LLMUnavailable, PromptPastContext
from planner_service.planning import PlanFailed, PlanTimedOut
from planner_service.prompting import PromptTooLong
from shared.queue import QueueFull, QuotaExceeded
from shared.service.problems import problem_body

DOMAIN_ERRORS: tuple[type[Exception], ...] = (
    PlanFailed,
    PlanTimedOut,
    LLMUnavailable,
    PromptPastContext,
    LLMError,
    ConversationNotFound,
    PromptTooLong,
    StoreUnavailable,
    QueueFull,
    QuotaExceeded,
    PlannerBusy,
    TooManyWaiting,
    ClientGone,
)


def error_body(exc: Exception) -> tuple[int, dict[str, Any]]:
    """Status and problem body of a planner failure, for the SSE ``error`` event (which cannot be
    an HTTP status once the stream has begun). Anything else is re-raised."""
    if not isinstance(exc, DOMAIN_ERRORS):
        raise exc
    status = int(getattr(exc, "http_status", 500))
    body = problem_body(status, str(exc))
    if isinstance(exc, PlanFailed):
        body.update(exc.problem_extensions())
    return status, body
