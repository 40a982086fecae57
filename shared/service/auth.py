"""The bearer tokens of both services' /v1/* routes, and who owns what a request creates.

``api_token`` holds one token or several separated by commas (one per client); with auth on, a job
is visible only to the token that submitted it. ``admin_token`` opens the admin views and sees
every job. Without ``api_token`` the /v1 routes are open: that mode is for a trusted network.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.service.problems import ServiceError, Unauthorized

PUBLIC_OWNER = "public"
"""The owner of everything created without auth (and of jobs that name no owner)."""
ADMIN_OWNER = "admin"

_bearer = HTTPBearer(auto_error=False, description="Needed only when the service's API token is set.")
_admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminBearer", description="The service's admin token (OMOST_*_ADMIN_TOKEN)."
)


class AdminViewOff(ServiceError):
    http_status = 403

    def __init__(self, variable: str) -> None:
        super().__init__(f"the admin view is off: set {variable} and send it as the bearer token")


def _given(request: Request) -> bytes | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given.strip().encode() if scheme.lower() == "bearer" else None


def api_tokens(settings: Any) -> list[bytes]:
    token = settings.api_token
    if token is None:
        return []
    return [t.strip().encode() for t in token.get_secret_value().split(",") if t.strip()]


def _matches(given: bytes | None, tokens: list[bytes]) -> bool:
    # compare_digest against every token, without stopping early: the time taken must not tell an
    # attacker how much of a token matched, nor which of them.
    found = False
    for token in tokens:
        found |= secrets.compare_digest(given or b"", token) and given is not None
    return found


def is_admin(request: Request) -> bool:
    admin = request.app.state.settings.admin_token
    return admin is not None and _matches(_given(request), [admin.get_secret_value().encode()])


def check_token(request: Request) -> None:
    """Raise ``Unauthorized`` unless the request carries one of the configured tokens (if any is set)
    or the admin token. The strict route class calls it before the body is parsed, so an anonymous
    client learns nothing about what it sent."""
    tokens = api_tokens(request.app.state.settings)
    if not tokens:
        return
    if not (_matches(_given(request), tokens) or is_admin(request)):
        raise Unauthorized("missing or wrong bearer token (send 'Authorization: Bearer <token>')")


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Dependency form of :func:`check_token` (it also documents the scheme in OpenAPI)."""
    check_token(request)


def admin_variable(request: Request) -> str:
    prefix = request.app.state.settings.model_config.get("env_prefix", "")
    return f"{prefix}ADMIN_TOKEN"


async def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)]
) -> None:
    """The admin views: 403 while no admin token is configured, 401 without it."""
    if request.app.state.settings.admin_token is None:
        raise AdminViewOff(admin_variable(request))
    if not is_admin(request):
        raise Unauthorized("missing or wrong admin token (send 'Authorization: Bearer <admin token>')")


def owner_digest(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()[:32]


def token_owner(request: Request) -> str:
    """Who owns what this request creates: a digest of its token, ``admin`` for the admin token,
    or ``public`` without auth."""
    if not api_tokens(request.app.state.settings):
        return PUBLIC_OWNER
    if is_admin(request):
        return ADMIN_OWNER
    return owner_digest(_given(request) or b"")


def rate_owner(request: Request) -> str:
    """Whose request rate this request counts against: its token's owner, or without auth its address."""
    owner = token_owner(request)
    if owner != PUBLIC_OWNER:
        return owner
    return f"address:{request.client.host if request.client else 'unknown'}"


def may_see(request: Request, owner: str | None) -> bool:
    """Whether this request may see a job owned by ``owner`` (None: a job that names no owner,
    e.g. queued straight into Redis, which only the admin sees once auth is on)."""
    if not api_tokens(request.app.state.settings) or is_admin(request):
        return True
    return owner is not None and owner == token_owner(request)
