"""``StrictRoute``: the route class of both services' /v1 routers.

Before FastAPI parses and validates a body, it (1) checks the bearer token when the route needs
one, so an anonymous client learns nothing from its body's errors; (2) refuses NaN and Infinity,
which Python's JSON parser accepts but JSON does not have; (3) validates the body in pydantic's
strict JSON mode, so ``"width": "64"`` is a 422 rather than silently an integer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from shared.service.auth import check_token, rate_owner, require_token
from shared.service.problems import field_errors
from shared.service.rates import check_rate

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class _NonFinite(ValueError):
    pass


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf without passing through parse_constant
        raise _NonFinite(text)
    return value


def _no_constant(name: str) -> float:
    raise _NonFinite(name)


def check_finite_json(body: bytes) -> None:
    """Raise a 422 ``RequestValidationError`` if ``body`` is JSON holding NaN or ±Infinity.
    Malformed JSON passes: FastAPI's own parse reports it with its position."""
    try:
        json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except _NonFinite as exc:
        raise RequestValidationError(
            [{"type": "finite_number", "loc": ("body",),
              "msg": f"{exc} is not a JSON number: numbers must be finite (no NaN or Infinity)"}]
        ) from None
    except ValueError:  # JSONDecodeError, or bytes that are not text at all
        return
    except RecursionError:  # e.g. 50,000 nested brackets: refuse before anything else recurses into it
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", 0), "msg": "JSON nested too deeply",
              "ctx": {"error": "arrays or objects nested too deeply"}}]
        ) from None


def strict_validate(adapter: TypeAdapter[Any], body: bytes) -> None:
    try:
        adapter.validate_json(body, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            return  # FastAPI reports malformed JSON itself, with its position
        raise RequestValidationError(field_errors(errors, prefix=("body",))) from None


class StrictRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needs_token = any(d.dependency is require_token for d in self.dependencies)
        annotation = self.body_field.field_info.annotation if self.body_field is not None else None
        adapter = TypeAdapter(annotation) if annotation is not None else None

        async def strict_handler(request: Request) -> Response:
            if needs_token:
                check_token(request)
                await check_rate(request, rate_owner(request))
            if adapter is not None and request.method in _BODY_METHODS:
                body = await request.body()  # cached: FastAPI reads the same bytes afterwards
                if body:
                    check_finite_json(body)
                    strict_validate(adapter, body)
            return await handler(request)

        return strict_handler
