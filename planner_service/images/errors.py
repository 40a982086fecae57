"""The one mapping of every failure of the Images API to OpenAI's error shape,
``{"error": {message, type, param, code}}``: validation, auth, planner, queue and render failures alike.

It is a route class for the Images router only, so no app-wide handler changes and the rest of the
API keeps its problem details."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from planner_service.dependencies import get_settings
from planner_service.images.protocol import ImagesAPIError, OpenAIErrorDetail, OpenAIErrorResponse
from shared.service.routing import StrictRoute

log = logging.getLogger(__name__)


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def _error_response(
    status: int, detail: OpenAIErrorDetail, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = OpenAIErrorResponse(error=detail, **extra).model_dump(exclude_none=True)
    body["error"].setdefault("param", None)
    body["error"].setdefault("code", None)
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """OpenAI answers a bad parameter with 400 naming it, not FastAPI's 422 list."""
    first: dict[str, Any] = dict(exc.errors()[0]) if exc.errors() else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
        return _error_response(400, OpenAIErrorDetail(message=message, type="invalid_request_error",
                                                      code="invalid_json"))
    loc = [part for part in first.get("loc", ()) if part != "body"]
    param = str(loc[0]) if loc and isinstance(loc[0], str) else None
    where = ".".join(str(part) for part in loc)
    message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    detail = OpenAIErrorDetail(message=message, type="invalid_request_error", param=param, code="invalid_value")
    return _error_response(400, detail)


def _from_status(exc: Exception) -> JSONResponse:
    """A failure that knows its status (the services' ``http_status`` convention)."""
    status = int(getattr(exc, "http_status", 500))
    headers = dict(getattr(exc, "headers", None) or {})
    code = {401: "invalid_api_key", 502: "plan_failed"}.get(status)
    detail = OpenAIErrorDetail(message=str(exc), type=_error_type(status), code=code)
    return _error_response(status, detail, headers or None)


async def _reshape(request: Request, exc: Exception) -> Response:
    """Let the app's handler decide the status of any other failure (a Redis error, a bug), then
    re-dress its body."""
    handlers = request.app.exception_handlers
    handler = next((handlers[k] for k in type(exc).__mro__ if k in handlers), None)
    if handler is None:
        raise exc
    if not hasattr(exc, "http_status"):
        log.error("unexpected failure in %s", request.url.path, exc_info=exc)
    response: Response = await handler(request, exc)
    try:
        body = json.loads(bytes(response.body))
    except ValueError:
        body = {}
    message = str(body.get("detail") or body.get("title") or exc) if isinstance(body, dict) else str(exc)
    headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
    detail = OpenAIErrorDetail(message=message, type=_error_type(response.status_code))
    return _error_response(response.status_code, detail, headers or None)


async def openai_error(request: Request, exc: Exception) -> Response:
    """``exc`` as OpenAI's error answer."""
    if isinstance(exc, ImagesAPIError):
        job = {"job": exc.job} if exc.job else {}
        return _error_response(exc.status, exc.detail, **job)
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, HTTPException):
        detail = OpenAIErrorDetail(message=str(exc.detail), type=_error_type(exc.status_code))
        return _error_response(exc.status_code, detail, dict(exc.headers) if exc.headers else None)
    if hasattr(exc, "http_status"):
        return _from_status(exc)
    return await _reshape(request, exc)


class OpenAIErrorRoute(StrictRoute):
    """The services' strict route (token before body, strict JSON), with every failure (validation, auth,
    planner, render) answered in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                response = await openai_error(request, exc)
            if response.status_code in (429, 503) and "retry-after" not in response.headers:
                # Every "try later" says when, whichever layer refused (queue full, plans in flight, LLM down).
                response.headers["Retry-After"] = str(get_settings(request).retry_after_seconds)
            return response

        return handle
