"""The bearer tokens of both services' /v1/* routes, and who owns what a request creates.

``api_token`` holds one token or several separated by commas (one per client), ``api_tokens_file``
named tokens with quotas (:mod:`shared.service.tokens`); with auth on, a job or a conversation is
visible only to the credential that created it. ``admin_token`` opens the admin views and sees every
job. Without either the /v1 routes are open: that mode is for a trusted network.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.service.problems import ServiceError, Unauthorized
from shared.service.tokens import Identity, TokenRegistry, owner_digest

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


def registry(request: Request) -> TokenRegistry:
    tokens: TokenRegistry = request.app.state.tokens
    return tokens


def auth_on(request: Request) -> bool:
    return registry(request).configured


def _matches(given: bytes | None, tokens: list[bytes]) -> bool:
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
    if not auth_on(request):
        return
    if not (registry(request).match(_given(request)) is not None or is_admin(request)):
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


def token_owner(request: Request) -> str:
    """Who owns what this request creates: a digest of its token, ``admin`` for the admin token,
    or ``public`` without auth."""
    return identity(request).owner


def identity(request: Request) -> Identity:
    """Who this request is: ``public`` without auth, ``admin`` for the admin token, else its token's
    identity (a named token's name and quota)."""
    if not auth_on(request):
        return Identity(PUBLIC_OWNER)
    if is_admin(request):
        return Identity(ADMIN_OWNER)
    given = _given(request)
    return registry(request).match(given) or Identity(owner_digest(given or b""))


def rate_owner(request: Request) -> str:
    """Whose request rate this request counts against: its token's owner, or without auth its address."""
    owner = token_owner(request)
    if owner != PUBLIC_OWNER:
        return owner
    return f"address:{request.client.host if request.client else 'unknown'}"


@dataclass(frozen=True)
class Caller:
    """Who asks, as the stores need it: the owner of what it creates, and whether it sees everything
    (no auth, or the admin token)."""

    owner: str
    sees_all: bool

    def may_see(self, owner: str | None) -> bool:
        return self.sees_all or (owner is not None and owner == self.owner)


def caller(request: Request) -> Caller:
    return Caller(token_owner(request), sees_all=not auth_on(request) or is_admin(request))


def may_see(request: Request, owner: str | None) -> bool:
    """Whether this request may see a job owned by ``owner`` (None: a job that names no owner,
    e.g. queued straight into Redis, which only the admin sees once auth is on)."""
    if not auth_on(request) or is_admin(request):
        return True
    return owner is not None and owner == token_owner(request)
