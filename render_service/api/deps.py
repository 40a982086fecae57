"""FastAPI dependencies: settings, the Redis client, the render queue, the queue statistics (the bearer token check is
shared with the planner: :mod:`shared.service.auth`)."""

from __future__ import annotations

from typing import Annotated

import redis.asyncio
from fastapi import Depends, Request

from render_service.api.event_hub import EventHub
from render_service.settings import RenderSettings
from render_service.store import JobStore
from shared.queue import RenderQueue
from shared.service.state import app_state


def get_settings(request: Request) -> RenderSettings:
    return app_state(request, "settings", RenderSettings)


def get_redis(request: Request) -> redis.asyncio.Redis:
    return app_state(request, "redis", redis.asyncio.Redis)


def get_store(request: Request) -> JobStore:
    return app_state(request, "store", JobStore)


def get_queue(request: Request) -> RenderQueue:
    return app_state(request, "queue", RenderQueue)


def get_event_hub(request: Request) -> EventHub:
    return app_state(request, "event_hub", EventHub)


SettingsDep = Annotated[RenderSettings, Depends(get_settings)]
RedisDep = Annotated[redis.asyncio.Redis, Depends(get_redis)]
StoreDep = Annotated[JobStore, Depends(get_store)]
QueueDep = Annotated[RenderQueue, Depends(get_queue)]
HubDep = Annotated[EventHub, Depends(get_event_hub)]


def base_url(request: Request, settings: RenderSettings) -> str:
    """Where clients reach us: the configured public URL (behind a proxy) or the request's own."""
    return settings.public_url or str(request.base_url)
