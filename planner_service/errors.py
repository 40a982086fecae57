"""Failures and the HTTP answers they become: a clear 4xx for the caller's mistakes, 502 for an LLM
that answered nonsense, 503 for one (or a store) that cannot be reached."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from planner_service.conversations import ConversationNotFound, StoreUnavailable
from planner_service.llm.client import LLMError, LLMUnavailable
from planner_service.planning import PlanFailed
from planner_service.prompting import PromptTooLong
from shared.queue import QueueFull

RETRY_AFTER_SECONDS = "5"


def error_body(exc: Exception) -> tuple[int, dict]:
    """Status and JSON body for a planner failure (also sent as the SSE ``error`` event)."""
    if isinstance(exc, PlanFailed):
        error = exc.error
        return 502, {
            "detail": str(exc),
            "parse_error": {"message": error.message, "line": error.line, "column": error.column},
            "raw": exc.raw,
            "attempts": exc.attempts,
        }
    if isinstance(exc, LLMUnavailable):
        return 503, {"detail": str(exc)}
    if isinstance(exc, LLMError):
        return 502, {"detail": str(exc)}
    if isinstance(exc, ConversationNotFound):
        return 404, {"detail": str(exc)}
    if isinstance(exc, PromptTooLong):
        return 400, {"detail": str(exc)}
    if isinstance(exc, StoreUnavailable):
        return 503, {"detail": str(exc)}
    if isinstance(exc, QueueFull):
        return 429, {"detail": str(exc)}
    raise exc


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        status, body = error_body(exc)
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if status in (429, 503) else None
        return JSONResponse(body, status_code=status, headers=headers)

    known = (PlanFailed, LLMUnavailable, LLMError, ConversationNotFound, PromptTooLong, StoreUnavailable, QueueFull)
    for kind in known:
        app.add_exception_handler(kind, handle)
