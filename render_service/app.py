"""The render API: ``create_app`` builds the FastAPI app around one Redis client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from render_service.api import admin, health, models, renders
from render_service.api.errors import DOMAIN_ERRORS, TRANSLATED
from render_service.api.event_hub import EventHub
from render_service.settings import RenderSettings
from render_service.store import JobStore
from shared.queue import RenderQueue
from shared.queue.connect import async_client, image_stores
from shared.service.app import service_app
from shared.service.exposure import warn_if_exposed
from shared.service.leases import LeasedPlaces


def create_app(settings: RenderSettings | None = None) -> FastAPI:
    settings = settings or RenderSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warn_if_exposed(settings, settings.host, "the render API")
        # One pooled client per process, created inside the server's event loop. A burst waits for
        # a free connection (up to the pool timeout) instead of failing at once.
        options: dict[str, Any] = {"socket_timeout": 15, "health_check_interval": 30}
        client = async_client(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            pool_timeout=settings.redis_pool_timeout_seconds,
            **options,
        )
        # The event hub's own connection (outside the pool): its blocking reads serve every SSE stream.
        reader = async_client(settings.redis_url, single_connection_client=True, **options)
        _, readable = image_stores(settings, settings.keys)
        queue = RenderQueue(client, settings, image_stores=readable, redirect=settings.s3_redirect)
        places = LeasedPlaces(client, settings.limit_lease_seconds)
        hub = EventHub(
            queue,
            reader,
            places=places,
            scope=settings.limits_scope,
            max_streams=settings.max_event_streams,
            max_per_client=settings.max_event_streams_per_client,
        )
        app.state.redis = client
        app.state.queue = queue
        app.state.store = JobStore(client, settings.keys)
        app.state.event_hub = hub
        hub.start()
        places.start()
        try:
            yield
        finally:
            await places.stop()
            await hub.stop()
            await reader.aclose()
            await client.aclose()

    app = service_app(
        settings,
        service_name="omost-render-api",
        domain_errors=DOMAIN_ERRORS,
        translated=TRANSLATED,
        title="Omost render service",
        version="0.1.0",
        summary="Queue region-controlled SDXL renders of Omost canvases and fetch the images.",
        lifespan=lifespan,
    )
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        # Bearer tokens, not cookies, authenticate: allowing any origin exposes nothing a script
        # without the token could not already fetch.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "X-Request-ID"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed", "X-Request-ID"],
        )
    app.include_router(health.router)
    app.include_router(renders.router)
    app.include_router(models.router)
    app.include_router(admin.router)
    return app
