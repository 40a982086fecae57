"""What travels on the streams: the JSON message of a job entry, the events, and Redis replies decoded.

One decoding rule for every Redis client of the queue (:func:`shared.queue.connect`): replies come
back as bytes and are decoded here, so PNG bytes and text share one client.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.jobs import JOB_ID_PATTERN, JobEvent, JobStatus, RenderRequest
from shared.queue.keys import (
    DEFAULT_TTL_SECONDS,
    EVENT_FIELD,
    MESSAGE_FIELD,
    PROTOCOL_VERSION,
    QueueKeys,
)


class QueueMessage(BaseModel):
    """The JSON in a stream entry's ``message`` field: everything a worker needs to run the job."""

    v: int = Field(default=PROTOCOL_VERSION, description="Protocol version; workers reject unknown ones.")
    job_id: str = Field(pattern=JOB_ID_PATTERN.pattern)
    request: RenderRequest
    webhook_url: str | None = None
    ttl_seconds: int = Field(default=DEFAULT_TTL_SECONDS, ge=1)
    enqueued_at: float = Field(default_factory=time.time)


def new_job_id() -> str:
    return uuid.uuid4().hex


def text(value: Any) -> str:
    """Redis answers bytes unless the client decodes; accept both."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


# Stream replies as our clients (``protocol=2``) get them. redis-py types each as the union of every shape
# it can take (RESP3 dicts, XCLAIM's JUSTID ids), so they are unpacked here, in one place.
StreamEntry = tuple[str, Mapping[Any, Any]]


def stream_entries(entries: Iterable[Sequence[Any]]) -> list[StreamEntry]:
    """``(id, fields)`` of each entry of an XRANGE or XCLAIM reply, or of one stream of an XREAD reply.

    XCLAIM on Redis 6.2 answers nil fields for an entry deleted since its delivery: check before use.
    """
    return [(text(entry_id), fields) for entry_id, fields in entries]


def read_entries(reply: Iterable[Sequence[Any]] | None) -> list[StreamEntry]:
    """The entries of an XREAD or XREADGROUP reply (``[[stream, entries], ...]``; nil on timeout), in order."""
    return [entry for _stream, entries in reply or [] for entry in stream_entries(entries)]


def encode_message(message: QueueMessage) -> dict[str, str]:
    return {MESSAGE_FIELD: message.model_dump_json()}


def decode_message(fields: Mapping[Any, Any]) -> QueueMessage:
    """Parse a stream entry; raises ``ValueError`` (pydantic's ValidationError is one) if malformed."""
    decoded = decode_hash(fields)
    if MESSAGE_FIELD not in decoded:
        raise ValueError(f"stream entry has no {MESSAGE_FIELD!r} field")
    data = json.loads(decoded[MESSAGE_FIELD])
    if isinstance(data, dict) and data.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ValueError(f"unsupported protocol version {data.get('v')!r}; this worker speaks {PROTOCOL_VERSION}")
    return QueueMessage.model_validate(data)

def make_event(status: JobStatus, type_: Literal["status", "progress"] = "status", **fields: Any) -> JobEvent:
    return JobEvent(type=type_, status=status, at=time.time(), **fields)


def queue_event(pipe: Any, keys: QueueKeys, job_id: str, event: JobEvent, ttl_seconds: int) -> None:
    """Append to the job's event stream, refreshing its TTL (the stream key is created by XADD)."""
    pipe.xadd(keys.events(job_id), {EVENT_FIELD: event.model_dump_json(exclude_none=True)})
    pipe.expire(keys.events(job_id), ttl_seconds)


def queue_observe(pipe: Any, keys: QueueKeys, name: str, value: float, buckets: tuple[float, ...]) -> None:
    """Count ``value`` into a cumulative Prometheus-style histogram kept in the metrics hash."""
    for bound in buckets:
        if value <= bound:
            pipe.hincrby(keys.metrics, f"{name}_bucket:{bound}", 1)
    pipe.hincrby(keys.metrics, f"{name}_bucket:+Inf", 1)
    pipe.hincrby(keys.metrics, f"{name}_count", 1)
    pipe.hincrbyfloat(keys.metrics, f"{name}_sum", value)
