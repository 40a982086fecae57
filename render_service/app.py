"""The render API: ``create_app`` builds the FastAPI app around one Redis client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from render_service.api import health, renders
from render_service.api.errors import DOMAIN_ERRORS, TRANSLATED
from render_service.images import S3Images
from render_service.settings import RenderSettings
from render_service.store import JobStore
from shared.service.app import service_app


def create_app(settings: RenderSettings | None = None) -> FastAPI:
    settings = settings or RenderSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One pooled client per process, created inside the server's event loop. Its socket
        # timeout outlasts the 5 s blocking XREAD behind each SSE stream.
        client = redis.asyncio.Redis.from_url(
            settings.redis_url, protocol=2, socket_timeout=15, socket_connect_timeout=5, health_check_interval=30
        )
        app.state.redis = client
        images = S3Images(settings) if settings.image_store == "s3" else None
        app.state.store = JobStore(client, settings.keys, images, redirect=settings.s3_redirect)
        try:
            yield
        finally:
            await client.aclose()

    app = service_app(
        settings,
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
    return app
