"""When tracing is on, and the trace context a queue message carries (the pieces that need no SDK; the
traces themselves are checked across real processes in tests/e2e/test_stack.py and
tests/render_service/test_workers.py)."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from shared.jobs import RenderRequest
from shared.queue import QueueMessage, decode_message, encode_message
from shared.service.tracing import context_from, link_to, tracing_requested

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),  # no exporter named
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_tracing_is_on_only_when_the_environment_asks(environ: dict[str, str], on: bool) -> None:
    assert tracing_requested(environ) is on


def _message(**trace: str) -> QueueMessage:
    request = RenderRequest.model_validate(
        {"canvas": {"global_description": {"description": "a cat", "HTML_web_color_name": "red"}}}
    )
    return QueueMessage(job_id="a" * 32, request=request, **trace)


def test_the_trace_context_travels_in_the_message() -> None:
    message = decode_message(encode_message(_message(traceparent=TRACEPARENT, tracestate="vendor=1")))
    assert message.trace_context() == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
    parent = trace.get_current_span(context_from(message.trace_context())).get_span_context()
    assert (format(parent.trace_id, "032x"), format(parent.span_id, "016x")) == (TRACEPARENT[3:35], TRACEPARENT[36:52])
    assert parent.is_remote and parent.trace_flags.sampled


def test_a_malformed_traceparent_is_ignored_not_refused() -> None:
    message = decode_message(encode_message(_message(traceparent="not a trace")))
    assert not trace.get_current_span(context_from(message.trace_context())).get_span_context().is_valid
    assert _message().trace_context() == {} and link_to(None) is None and link_to("junk") is None
    assert link_to(TRACEPARENT) is not None
