"""``service_app``: the FastAPI skeleton both services are built on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI

from shared.service.docs import install_offline_docs
from shared.service.limits import BodySizeLimit
from shared.service.logging import RequestIdMiddleware
from shared.service.problems import install_problem_handlers, install_problem_openapi
from shared.service.settings import ServiceSettings
from shared.service.tokens import TokenRegistry
from shared.service.tracing import configure_tracing, instrument_app


def service_app(
    settings: ServiceSettings,
    *,
    service_name: str,
    domain_errors: Iterable[type[Exception]] = (),
    translated: Mapping[type[Exception], Any] | None = None,
    **fastapi_options: Any,
) -> FastAPI:
    """A FastAPI app with the settings on ``app.state``, problem-details errors (documented in
    OpenAPI), the body limit, request ids in the logs, offline docs, and server spans when the ``OTEL_*``
    environment asks for traces (``service_name``: the default ``service.name``). Routers are added after."""
    configure_tracing(service_name)
    app = FastAPI(docs_url=None, redoc_url=None, **fastapi_options)
    app.state.settings = settings
    app.state.tokens = TokenRegistry(settings)  # a bad token file stops the start, saying why
    install_problem_handlers(
        app, domain_errors, retry_after_seconds=settings.retry_after_seconds, translated=translated
    )
    install_problem_openapi(app)
    install_offline_docs(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)  # outermost: every line logged while serving carries the id
    instrument_app(app)  # outside even that, when tracing is on: the server span covers the whole request
    return app
