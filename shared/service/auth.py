"""The optional bearer token of both services' /v1/* routes."""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.service.problems import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="Needed only when the service's API token is set.")


def check_token(request: Request) -> None:
    """Raise ``Unauthorized`` unless the request carries the configured token (if one is set).

    Reads ``request.app.state.settings.api_token``; the strict route class calls it before the
    body is parsed, so an anonymous client learns nothing about what it sent."""
    token = request.app.state.settings.api_token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not tell an attacker how much of the token matched.
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), expected):
        raise Unauthorized("missing or wrong bearer token (send 'Authorization: Bearer <token>')")


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Dependency form of :func:`check_token` (it also documents the scheme in OpenAPI)."""
    check_token(request)


def token_owner(request: Request) -> str:
    """Who owns what this request creates: a digest of its token, or "public" without auth."""
    token = request.app.state.settings.api_token
    if token is None:
        return "public"
    given = request.headers.get("authorization", "").partition(" ")[2].strip()
    return hashlib.sha256(given.encode()).hexdigest()[:32]
