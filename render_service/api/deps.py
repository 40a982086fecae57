"""FastAPI dependencies: settings, the Redis client, the job store and the optional bearer token."""

from __future__ import annotations

import secrets
from typing import Annotated

import redis.asyncio
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from render_service.settings import RenderSettings
from render_service.store import JobStore


def get_settings(request: Request) -> RenderSettings:
    return request.app.state.settings


def get_redis(request: Request) -> redis.asyncio.Redis:
    return request.app.state.redis


def get_store(request: Request) -> JobStore:
    return request.app.state.store


SettingsDep = Annotated[RenderSettings, Depends(get_settings)]
RedisDep = Annotated[redis.asyncio.Redis, Depends(get_redis)]
StoreDep = Annotated[JobStore, Depends(get_store)]

_bearer = HTTPBearer(auto_error=False, description="Needed only when OMOST_RENDER_API_TOKEN is set.")


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value()
    # compare_digest: the time taken must not tell an attacker how much of the token matched.
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token (send 'Authorization: Bearer <token>')",
            headers={"WWW-Authenticate": "Bearer"},
        )


def base_url(request: Request, settings: RenderSettings) -> str:
    """Where clients reach us: the configured public URL (behind a proxy) or the request's own."""
    return settings.public_url or str(request.base_url)
