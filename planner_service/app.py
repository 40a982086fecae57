"""The planner's FastAPI app factory.

Everything with a lifetime (the embedded llama.cpp server, the HTTP client to the LLM, the Redis
client) is made in the lifespan, not at import, so ``create_app`` has no side effects until served.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from planner_service.admission import Admission
from planner_service.conversations import ConversationStore
from planner_service.errors import DOMAIN_ERRORS
from planner_service.llm.client import LLMError, LLMUnavailable, OpenAIClient, ServedModel
from planner_service.llm.embedded import EmbeddedLlamaServer
from planner_service.metrics import PlannerMetrics
from planner_service.planning import Planner
from planner_service.playground import mount_playground
from planner_service.routers import conversations, generations, health, images, plans
from planner_service.service import PlanService
from planner_service.settings import PlannerSettings
from shared.queue import RenderQueue
from shared.queue.connect import async_client, image_stores
from shared.queue.settings import RenderImageStoreSettings
from shared.service.app import service_app
from shared.service.exposure import warn_if_exposed
from shared.service.leases import LeasedPlaces

log = logging.getLogger("planner_service")


async def _served_model(client: OpenAIClient, configured: str | None) -> ServedModel | None:
    """The configured model, else the server's first (vLLM insists on the exact served name), with
    its context window where the server says it (vLLM does)."""
    try:
        served = await client.models()
    except (LLMUnavailable, LLMError) as exc:
        log.warning("could not list the LLM server's models (%s); will ask again per request", exc)
        return ServedModel(configured) if configured else None
    if configured:
        return next((m for m in served if m.id == configured), ServedModel(configured))
    return served[0] if served else None


def _fitted(settings: PlannerSettings, model: ServedModel | None) -> PlannerSettings:
    """The settings with the model's name filled in (the shaping defaults follow it) and the context
    budget no larger than the server's window (a prompt past it is then refused before it is sent)."""
    if model is None:
        return settings
    update: dict[str, object] = {"llm_model": model.id}
    window = model.max_model_len
    if window and window < settings.context_tokens:
        # The default answer then keeps its share of the smaller window (settings.default_max_new_tokens).
        log.info("context %d tokens: the LLM server's window for %s", window, model.id)
        update["context_tokens"] = window
    return settings.model_copy(update=update)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: PlannerSettings = app.state.settings
    embedded: EmbeddedLlamaServer | None = None
    if settings.embedded:
        embedded = EmbeddedLlamaServer(
            settings.gguf_path,
            n_ctx=settings.context_tokens,
            threads=settings.embedded_threads,
            verbosity=settings.embedded_verbosity,
        )
        base_url = await asyncio.to_thread(embedded.start)  # loading the model blocks
    else:
        assert settings.llm_url is not None
        base_url = settings.llm_url
    warn_if_exposed(settings, settings.host, "the planner")
    # Room for every admitted plan plus the probes: a plan never waits for a pooled connection, so
    # the client's pool timeout can no longer pass for "LLM unreachable" (503).
    limits = httpx.Limits(max_connections=settings.max_concurrent_plans + 4, max_keepalive_connections=32)
    client = OpenAIClient(
        base_url,
        transport=httpx.AsyncHTTPTransport(limits=limits),
        api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
        kind=settings.grammar_kind,
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        connect_retries=settings.connect_retries,
    )
    served = await _served_model(client, settings.llm_model)
    settings = app.state.settings = _fitted(settings, served)
    client.model = settings.llm_model
    redis_client = async_client(settings.redis_url)
    # The render service's image store, read under its own settings' names, for b64_json answers.
    _, readable = image_stores(RenderImageStoreSettings(), settings.keys)
    metrics: PlannerMetrics = app.state.metrics
    planner = Planner(client, settings, metrics)
    store = ConversationStore(redis_client, prefix=settings.key_prefix, ttl_seconds=settings.conversation_ttl_seconds)
    app.state.llm = client
    app.state.redis = redis_client
    app.state.queue = RenderQueue(redis_client, settings, image_stores=readable)
    app.state.planner = planner
    app.state.store = store
    app.state.plan_service = PlanService(planner, store, metrics)
    # Plans in flight are counted in Redis, so the limit holds for all planner replicas together.
    places = LeasedPlaces(redis_client, settings.limit_lease_seconds)
    plans_key = f"{settings.key_prefix}limits:{settings.limits_scope}:plans"
    app.state.admission = Admission(places, plans_key, settings.max_concurrent_plans)
    places.start()
    log.info(
        "planner ready: LLM %s, model %s (%s; grammar field %s): grammar %s, subject constraints %s, "
        "one-shot %s, frequency penalty %s, context %d tokens, default max_new_tokens %d",
        base_url,
        settings.model_name,
        settings.shaping_reason,
        settings.grammar_kind,
        settings.resolved_profile,
        settings.use_subject_constraints,
        settings.use_one_shot,
        settings.resolved_frequency_penalty,
        settings.context_tokens,
        settings.default_max_new_tokens,
    )
    try:
        yield
    finally:
        await places.stop()
        await client.aclose()
        await redis_client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def create_app(settings: PlannerSettings | None = None) -> FastAPI:
    settings = settings or PlannerSettings()
    app = service_app(
        settings,
        service_name="omost-planner",
        domain_errors=DOMAIN_ERRORS,
        title="Omost planner",
        version="0.1.0",
        description="Turns a prompt into an Omost canvas with an LLM; plans render jobs.",
        lifespan=_lifespan,
    )
    app.state.metrics = PlannerMetrics()
    app.include_router(plans.router)
    app.include_router(generations.router)
    app.include_router(conversations.router)
    app.include_router(images.router)
    app.include_router(health.router)
    if settings.playground:
        size = settings.playground_default_size
        default_size = (int(size.split("x")[0]), int(size.split("x")[1])) if size else None
        mount_playground(app, settings.playground_render_url or settings.render_api_url, default_size=default_size)
    return app
