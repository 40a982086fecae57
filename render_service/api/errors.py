"""Every failure a client can cause gets a 4xx whose ``detail`` says what was wrong, never a 500."""

from __future__ import annotations

from typing import Any

import redis.exceptions
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from render_service.settings import RenderSettings
from render_service.store import JobFinished, JobNotFound
from render_service.webhooks import WebhookRefused
from shared.queue import IdempotencyConflict, QueueFull


class BodyTooLarge(HTTPException):
    # An HTTPException so that FastAPI, which wraps other errors raised while reading the body in
    # a generic 400, passes it through unchanged.
    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=f"request body is larger than the limit of {limit} bytes")


class BodySizeLimit:
    """Refuse bodies over ``max_bytes``: by Content-Length up front, else while they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False  # the server rejects malformed lengths itself
                if too_large:
                    error = BodyTooLarge(self.max_bytes)
                    response = JSONResponse({"detail": error.detail}, status_code=error.status_code)
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "path", "query", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    return ".".join(parts) or "body"


def _describe(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    described = []
    for error in errors:
        item = {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
        # Echoing "input" back could return a whole oversized canvas; the location says enough.
        described.append(item)
    return described


def install_error_handlers(app: FastAPI, settings: RenderSettings) -> None:
    retry_after = str(settings.retry_after_seconds)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        json_errors = [e for e in errors if e.get("type") == "json_invalid"]
        if json_errors:
            ctx = json_errors[0].get("ctx") or {}
            where = json_errors[0].get("loc", ("body", "?"))
            detail = f"malformed JSON body: {ctx.get('error', 'invalid JSON')} (at position {where[-1]})"
            return JSONResponse({"detail": detail}, status_code=status.HTTP_400_BAD_REQUEST)
        described = _describe(errors)
        summary = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in described)
        return JSONResponse(
            {"detail": f"invalid request: {summary}", "errors": described},
            status_code=422,
        )

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(JobFinished)
    async def finished(request: Request, exc: JobFinished) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(IdempotencyConflict)
    async def idempotency_conflict(request: Request, exc: IdempotencyConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(WebhookRefused)
    async def webhook_refused(request: Request, exc: WebhookRefused) -> JSONResponse:
        return JSONResponse({"detail": f"invalid request: webhook_url: {exc}"}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": retry_after}
        )

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        # Not the client's fault and usually brief: 503 + Retry-After invites a retry.
        return JSONResponse(
            {"detail": "the job store (Redis) is unavailable; try again shortly"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": retry_after},
        )
