"""Every 4xx/5xx of both services as RFC 9457 problem details (``application/problem+json``).

The wire format lives here and nowhere else. Domain exceptions say which status they are by a
class attribute ``http_status`` (the contract's own exceptions can carry it without importing
this package); ``install_problem_handlers`` registers one handler that maps them, FastAPI's
validation errors, starlette's HTTP errors (404/405 from routing included) and anything
unexpected (a 500 without internals).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from shared.service.tracing import note_problem

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_STATUSES = frozenset({429, 503})

log = logging.getLogger("shared.service")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: 'body', 'query', 'path' or 'header', then the field path.")
    msg: str
    type: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details; ``errors`` lists the fields of a 422."""

    type: str = Field(default="about:blank", description="about:blank: the status code says it all.")
    title: str = Field(description="The status code's phrase.")
    status: int
    detail: str = Field(description="What was wrong, in one sentence a person can act on.")
    instance: str | None = Field(default=None, description="The request's path.")
    errors: list[FieldError] | None = None


class ServiceError(Exception):
    """Base for service-side failures that know their status (contract exceptions use the same
    attribute names without inheriting)."""

    http_status = 500
    headers: ClassVar[Mapping[str, str] | None] = None


class Unauthorized(ServiceError):
    http_status = 401
    headers: ClassVar[Mapping[str, str] | None] = {"WWW-Authenticate": "Bearer"}


def problem(
    request: Request | None,
    status: int,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """The one place a problem body is built."""
    body = problem_body(status, detail, instance=request.url.path if request else None, errors=errors)
    if extensions:
        body.update(extensions)
    note_problem(body)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE)


def problem_body(
    status: int, detail: str, *, instance: str | None = None, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance is not None:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    return body


MAX_LOC_CHARS = 64


def _clip(name: str) -> str:
    # A field name is the client's text too (an unknown key may be 200 kB): name it, don't echo it.
    return name if len(name) <= MAX_LOC_CHARS else name[:MAX_LOC_CHARS] + "..."


def field_errors(errors: Iterable[Mapping[str, Any]], prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """loc/msg/type of each error, never its ``input`` (which may be a 50 MB body or a NaN)."""
    described = []
    for error in errors:
        loc = [*prefix, *(p if isinstance(p, int) else _clip(str(p)) for p in error.get("loc", ()))]
        described.append({"loc": loc, "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))})
    return described


def _where(loc: list[str | int]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_problem(request: Request | None, errors: list[dict[str, Any]]) -> JSONResponse:
    """400 for a body that is not JSON at all, else 422 naming every field that is wrong."""
    malformed = [e for e in errors if e.get("type") == "json_invalid"]
    if malformed:
        ctx = malformed[0].get("ctx") or {}
        position = (malformed[0].get("loc") or ("body", "?"))[-1]
        detail = f"malformed JSON body: {ctx.get('error', 'invalid JSON')} (at position {position})"
        return problem(request, 400, detail)
    described = field_errors(errors)
    summary = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in described)
    return problem(request, 422, f"invalid request: {summary}", errors=described)


def _routes(routes: Iterable[Any]) -> Iterable[Any]:
    """Routes with included routers expanded (our routers carry their prefix themselves)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from _routes(included.routes) if included is not None else (route,)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in _routes(request.app.routes):
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route_methods)
    return sorted(methods | {"OPTIONS"}) if methods else []


def install_problem_handlers(
    app: FastAPI,
    domain_errors: Iterable[type[Exception]],
    *,
    retry_after_seconds: int,
    translated: Mapping[type[Exception], Callable[[Exception], Exception]] | None = None,
) -> None:
    """Register the problem handlers. ``domain_errors``: exception classes with ``http_status``;
    ``translated``: foreign exceptions (e.g. Redis's) turned into a domain error first."""
    retry_after = {"Retry-After": str(retry_after_seconds)}

    async def domain(request: Request, exc: Exception) -> Response:
        status = int(getattr(exc, "http_status", 500))
        headers = dict(getattr(exc, "headers", None) or {})
        if status in RETRY_STATUSES:
            headers.setdefault("Retry-After", retry_after["Retry-After"])
        extensions = getattr(exc, "problem_extensions", None)
        return problem(request, status, str(exc), headers=headers, extensions=extensions() if extensions else None)

    async def foreign(request: Request, exc: Exception) -> Response:
        for kind, make in (translated or {}).items():
            if isinstance(exc, kind):
                return await domain(request, make(exc))
        return await unexpected(request, exc)

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(request, list(exc.errors()))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            if allowed:
                headers["Allow"] = ", ".join(allowed)
            if request.method == "OPTIONS" and allowed:
                return Response(status_code=204, headers=headers)  # OPTIONS answers what the path allows
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"nothing at {request.url.path}"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem(request, exc.status_code, detail, headers=headers)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback itself; the client learns only that it was our fault.
        return problem(request, 500, "internal server error; the service log has the details")

    for kind in (ServiceError, *domain_errors):
        app.add_exception_handler(kind, domain)
    for kind in translated or {}:
        app.add_exception_handler(kind, foreign)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _generic(response: dict[str, Any]) -> bool:
    content = response.get("content")
    return not content or "HTTPValidationError" in str(content)


def _statuses_of(operation: dict[str, Any]) -> tuple[int, ...]:
    """What any operation of this shape can answer, whatever its route declares."""
    statuses = [500]
    if operation.get("security"):
        statuses.append(401)
    if "requestBody" in operation:
        statuses += [400, 413, 422]
    return tuple(statuses)


def install_problem_openapi(app: FastAPI) -> None:
    """Every operation's 4xx/5xx documented as ``application/problem+json`` with ``ProblemDetails``
    (FastAPI's own 422 schema included), plus the statuses any route of its shape can answer."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem_schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem_schema.pop("$defs", {}))
        components["ProblemDetails"] = problem_schema
        ref = {"$ref": "#/components/schemas/ProblemDetails"}
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                for status in _statuses_of(operation):
                    responses.setdefault(str(status), {"description": HTTPStatus(status).phrase})
                for status, response in responses.items():
                    # A route that spells out its own error body (a probe's report) keeps it.
                    if status.isdigit() and int(status) >= 400 and _generic(response):
                        response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": ref}}
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
