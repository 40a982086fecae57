"""OpenTelemetry traces for every process of the project: the two services, the worker and the CLI.

Off unless the standard environment asks for traces (:func:`tracing_requested`): then
:func:`configure_tracing` sets up the SDK from the same ``OTEL_*`` variables every OpenTelemetry SDK
reads (service name and resource, sampler, exporter endpoint, headers, batching) and instruments
httpx and redis with OpenTelemetry's own instrumentations; :func:`instrument_app` does FastAPI.
Off, nothing is instrumented and the spans the code opens are the API's no-op spans.

The code opens its spans through :data:`tracer` and the helpers here, so the names of the
``omost.*`` attributes live in one place (listed in docs/observability.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.jobs import RenderRequest

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace.sampling import Sampler, SamplingResult
    from opentelemetry.util.types import Attributes

log = logging.getLogger(__name__)

tracer = trace.get_tracer("omost")
"""The project's tracer: a no-op until :func:`configure_tracing` installs the SDK's provider."""

EXPORTER_GROUP = "opentelemetry_traces_exporter"
"""The entry-point group where the SDK and the exporter packages register exporters by name."""

EXCLUDED_URLS = "/healthz,/readyz,/metrics"
"""Probes and scrapes are not traced (``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS`` overrides this)."""

_W3C = TraceContextTextMapPropagator()
_configured: bool | None = None


def tracing_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint or a traces exporter other than
    ``none`` is named, and ``OTEL_SDK_DISABLED`` is not ``true``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return exporters.strip().lower() not in ("", "none")
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure_tracing(default_service_name: str) -> bool:
    """Install the SDK once per process when :func:`tracing_requested`; True when traces are on.

    ``default_service_name`` names the process unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` do. Without the ``tracing`` extra installed it warns and stays off.
    """
    global _configured
    if _configured is not None:
        return _configured
    _configured = False
    if not tracing_requested():
        return False
    try:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning(
            "OTEL_* asks for traces but the tracing packages are missing: pip install 'omost-service[tracing]'",
            extra={"fields": {"error": str(exc)}},
        )
        return False
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER(_ARG)
    provider.sampler = _without_orphan_clients(provider.sampler)
    exporters = _exporters()
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
    trace.set_tracer_provider(provider)
    HTTPXClientInstrumentor().instrument()  # injects traceparent into every outgoing request
    RedisInstrumentor().instrument()
    _configured = True
    names = [type(e).__name__ for e in exporters]
    log.info("tracing on", extra={"fields": {"service": resource.attributes.get(SERVICE_NAME), "exporters": names}})
    return True


def _exporters() -> list[Any]:
    """The span exporters ``OTEL_TRACES_EXPORTER`` names (default ``otlp``), looked up by the SDK's
    entry points; ``otlp`` speaks ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``, by default the
    specification's ``http/protobuf``."""
    from importlib.metadata import entry_points

    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"
    found = []
    for name in names:
        if name == "otlp":
            name = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
        points = list(entry_points(group=EXPORTER_GROUP, name=name))
        if not points:
            log.warning("no such traces exporter installed", extra={"fields": {"exporter": name}})
            continue
        found.append(points[0].load()())
    return found


def _without_orphan_clients(sampler: Sampler) -> Sampler:
    """``sampler``, except that a client call made outside any span (a heartbeat, a stream poll, a
    probe's Redis call) is not traced: each would be a trace of its own, every second."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class NoOrphanClients(Sampler):
        def should_sample(
            self,
            parent_context: otel_context.Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            parent = trace.get_current_span(parent_context).get_span_context()
            if kind == SpanKind.CLIENT and not parent.is_valid:
                return SamplingResult(Decision.DROP)
            return sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"NoOrphanClients{{{sampler.get_description()}}}"

    return NoOrphanClients()


def instrument_app(app: FastAPI) -> None:
    """Server spans for every request of ``app`` (a no-op while tracing is off)."""
    if not _configured:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    excluded = os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or EXCLUDED_URLS
    # One span per request: not one more for each ASGI message sent and received.
    FastAPIInstrumentor.instrument_app(app, excluded_urls=excluded, exclude_spans=["receive", "send"])


# --- the trace context in a queue message ------------------------------------------------------------


def current_trace_context() -> dict[str, str]:
    """The current span's W3C ``traceparent`` (and ``tracestate``), to carry in a queue message; empty
    while tracing is off."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier


def context_from(carrier: Mapping[str, str | None]) -> otel_context.Context:
    """The context a carried ``traceparent`` names (an empty one if absent or malformed)."""
    present = {k: v for k, v in carrier.items() if v}
    return _W3C.extract(present, context=otel_context.Context())


def traceparent_of(span: Span) -> str | None:
    """``span``'s ``traceparent`` value; None for a no-op span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def link_to(traceparent: str | None) -> Link | None:
    """A link to the span a ``traceparent`` names (e.g. an earlier run of the same job)."""
    if not traceparent:
        return None
    linked = trace.get_current_span(context_from({"traceparent": traceparent})).get_span_context()
    return Link(linked) if linked.is_valid else None


# --- spans ---------------------------------------------------------------------------------------------


def request_attributes(request: RenderRequest) -> dict[str, str | int]:
    """What a render's spans say about the job asked for: size, steps, images, regions, sampler."""
    return {
        "omost.render.width": request.width,
        "omost.render.height": request.height,
        "omost.render.steps": request.steps,
        "omost.render.images": request.num_images,
        "omost.render.regions": len(request.canvas.local_descriptions),
        "omost.render.sampler": str(request.sampler),
    }


@contextlib.contextmanager
def child_span(
    parent: Span, name: str, attributes: Attributes = None, links: Sequence[Link] | None = None
) -> Iterator[Span]:
    """A span under ``parent`` (which may belong to another thread), current while the block runs."""
    context = trace.set_span_in_context(parent)
    with tracer.start_as_current_span(name, context=context, attributes=attributes, links=links) as span:
        yield span


def record_error(span: Span, exc: BaseException | None, problem_type: str, message: str | None = None) -> None:
    """Mark ``span`` failed: status ERROR, the exception (when there is one) and ``omost.problem.type``."""
    if not span.is_recording():
        return
    if exc is not None:
        span.record_exception(exc)
    span.set_attribute("omost.problem.type", problem_type)
    span.set_status(Status(StatusCode.ERROR, message or (f"{type(exc).__name__}: {exc}" if exc else problem_type)))


def note_problem(body: Mapping[str, Any]) -> None:
    """Put an HTTP problem answer (RFC 9457 body) on the current server span; 5xx mark it failed."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("omost.problem.type", str(body.get("type", "about:blank")))
    span.set_attribute("omost.problem.title", str(body.get("title", "")))
    if int(body.get("status", 500)) >= 500:
        span.set_status(Status(StatusCode.ERROR, str(body.get("detail", ""))))


LONG_RUNNING_COMMANDS = frozenset({"serve", "mcp"})
"""``omost`` commands that run services rather than make requests: no span around them (their
services trace themselves)."""


@contextlib.contextmanager
def command_span(argv: Sequence[str]) -> Iterator[None]:
    """One span (``omost <command>``) around a CLI command, so its requests form one trace."""
    command = next((arg for arg in argv if not arg.startswith("-")), "")
    if not command or command in LONG_RUNNING_COMMANDS or not configure_tracing("omost-cli"):
        yield
        return
    with tracer.start_as_current_span(
        f"omost {command}", record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield
        except SystemExit as exc:
            if exc.code not in (0, None):
                span.set_status(Status(StatusCode.ERROR, f"exit status {exc.code}"))
            raise
        except BaseException as exc:
            record_error(span, exc, type(exc).__name__)
            raise


def log_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span, for a log line; empty outside any (or when off)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}
