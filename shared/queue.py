"""The render queue's Redis protocol: key names, the JSON message, job records and events.

Everything here is plain Redis (hashes, strings, streams with one consumer group) so that any
language can enqueue a job; ``docs/queue-protocol.md`` is the prose version of this module and
must stay in step with it. No torch or FastAPI here: the planner service imports this module.

The pipeline helpers (``queue_*``) only *buffer* commands on a pipeline, which works the same on a
synchronous ``redis.Redis`` pipeline (the worker) and a ``redis.asyncio`` one (the API), so both
sides write records and events in exactly the same shape.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from pydantic import BaseModel, Field
from redis.exceptions import WatchError

from shared.jobs import (
    TERMINAL_STATUSES,
    JobEvent,
    JobStatus,
    Progress,
    RenderJob,
    RenderJobUrls,
    RenderRequest,
)

PROTOCOL_VERSION = 1
DEFAULT_PREFIX = "omost:"
DEFAULT_TTL_SECONDS = 24 * 3600
GROUP = "render-workers"
"""The one consumer group every worker reads through (group names are not keys, so no prefix)."""
MESSAGE_FIELD = "message"
"""Stream entries carry one field, ``message``, holding the JSON :class:`QueueMessage`."""
EVENT_FIELD = "event"
"""Event-stream entries carry one field, ``event``, holding a JSON :class:`shared.jobs.JobEvent`."""

JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Ids we mint are 32 hex chars; other enqueuers may pick any id matching this."""

RENDER_SECONDS_BUCKETS: tuple[float, ...] = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
STEP_SECONDS_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
"""Histogram buckets the workers count into the shared metrics hash (see :func:`queue_observe`)."""


@dataclass(frozen=True)
class QueueKeys:
    """Every Redis key of one deployment, all under ``prefix`` so deployments (and tests) can share a
    Redis without seeing each other."""

    prefix: str = DEFAULT_PREFIX
    group: str = GROUP

    @property
    def stream(self) -> str:
        """The job stream: one entry per delivery-able job."""
        return f"{self.prefix}renders"

    @property
    def dead_letter(self) -> str:
        """Jobs given up on: the original message plus ``reason``, ``job_id`` and ``failed_at``."""
        return f"{self.prefix}renders:dead"

    @property
    def workers(self) -> str:
        """Sorted set: worker name -> Unix time of its last heartbeat."""
        return f"{self.prefix}workers"

    @property
    def metrics(self) -> str:
        """Hash of counters the workers and the API increment; ``/metrics`` exports them."""
        return f"{self.prefix}metrics"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}render:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}render:{job_id}:events"

    def image(self, job_id: str, index: int) -> str:
        return f"{self.prefix}render:{job_id}:image:{index}"

    def worker(self, name: str) -> str:
        """Hash describing a live worker (model, device, pid); expires unless heartbeats refresh it."""
        return f"{self.prefix}worker:{name}"

    def idempotency(self, key: str) -> str:
        # Hashed so that any client-chosen string (spaces, 10 kB, ...) makes a sane key.
        return f"{self.prefix}idempotency:{hashlib.sha256(key.encode()).hexdigest()}"


class QueueMessage(BaseModel):
    """The JSON in a stream entry's ``message`` field: everything a worker needs to run the job."""

    v: int = Field(default=PROTOCOL_VERSION, description="Protocol version; workers reject unknown ones.")
    job_id: str = Field(pattern=JOB_ID_PATTERN.pattern)
    request: RenderRequest
    webhook_url: str | None = None
    ttl_seconds: int = Field(default=DEFAULT_TTL_SECONDS, ge=1)
    enqueued_at: float = Field(default_factory=time.time)


class QueueFull(Exception):
    """The stream holds ``depth`` jobs, at or over the configured limit."""

    http_status = 429  # the services' problem handlers read it (the contract imports no web framework)

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"the render queue holds {depth} jobs (limit {limit}); try again later")
        self.depth = depth
        self.limit = limit


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used for a different request."""

    http_status = 409

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"this Idempotency-Key was already used for job {job_id} with a different request body; "
            "use a new key for a new request"
        )
        self.job_id = job_id


def new_job_id() -> str:
    return uuid.uuid4().hex


def text(value: Any) -> str:
    """Redis answers bytes unless the client decodes; accept both."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


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


def initial_record(message: QueueMessage) -> dict[str, str]:
    """The job record hash as first written (status ``queued``). Absent fields read as unset."""
    record = {
        "id": message.job_id,
        "status": "queued",
        "request": message.request.model_dump_json(),
        "created_at": repr(message.enqueued_at),
        "ttl_seconds": str(message.ttl_seconds),
        "deliveries": "0",
        "num_images": "0",
    }
    if message.webhook_url:
        record["webhook_url"] = message.webhook_url
    return record


def make_event(status: JobStatus, type_: str = "status", **fields: Any) -> JobEvent:
    return JobEvent(type=type_, status=status, at=time.time(), **fields)  # type: ignore[arg-type]


def queue_event(pipe: Any, keys: QueueKeys, job_id: str, event: JobEvent, ttl_seconds: int) -> None:
    """Append to the job's event stream, refreshing its TTL (the stream key is created by XADD)."""
    pipe.xadd(keys.events(job_id), {EVENT_FIELD: event.model_dump_json(exclude_none=True)})
    pipe.expire(keys.events(job_id), ttl_seconds)


def queue_new_job(pipe: Any, keys: QueueKeys, message: QueueMessage) -> None:
    """Buffer the commands that create a queued job: record, first event, stream entry."""
    job_key = keys.job(message.job_id)
    pipe.hset(job_key, mapping=initial_record(message))
    pipe.expire(job_key, message.ttl_seconds)
    queue_event(pipe, keys, message.job_id, make_event("queued"), message.ttl_seconds)
    pipe.xadd(keys.stream, encode_message(message))
    pipe.hincrby(keys.metrics, "jobs_submitted_total", 1)


def queue_terminal(
    pipe: Any,
    keys: QueueKeys,
    job_id: str,
    status: JobStatus,
    ttl_seconds: int,
    *,
    record: Mapping[str, str] | None = None,
    error: str | None = None,
    message: str | None = None,
    worker: str | None = None,
) -> None:
    """Buffer a transition to a terminal status; the TTL restarts so results live ``ttl`` after the end."""
    assert status in TERMINAL_STATUSES
    fields: dict[str, str] = {"status": status, "finished_at": repr(time.time())}
    if error:
        fields["error"] = error
    fields.update(record or {})
    pipe.hset(keys.job(job_id), mapping=fields)
    pipe.expire(keys.job(job_id), ttl_seconds)
    queue_event(pipe, keys, job_id, make_event(status, error=error, message=message, worker=worker), ttl_seconds)
    pipe.hincrby(keys.metrics, f"jobs_total:{status}", 1)


def queue_observe(pipe: Any, keys: QueueKeys, name: str, value: float, buckets: tuple[float, ...]) -> None:
    """Count ``value`` into a cumulative Prometheus-style histogram kept in the metrics hash."""
    for bound in buckets:
        if value <= bound:
            pipe.hincrby(keys.metrics, f"{name}_bucket:{bound}", 1)
    pipe.hincrby(keys.metrics, f"{name}_bucket:+Inf", 1)
    pipe.hincrby(keys.metrics, f"{name}_count", 1)
    pipe.hincrbyfloat(keys.metrics, f"{name}_sum", value)


def _request_fingerprint(request: RenderRequest, webhook_url: str | None) -> str:
    body = json.dumps({"request": request.model_dump(mode="json"), "webhook_url": webhook_url}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


async def submit_render(
    redis_client: redis.asyncio.Redis,
    request: RenderRequest,
    *,
    prefix: str = DEFAULT_PREFIX,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    max_queue_depth: int | None = None,
) -> tuple[str, bool]:
    """Like :func:`enqueue_render` but also says whether a job was created (False: idempotent replay)."""
    keys = QueueKeys(prefix)
    message = QueueMessage(job_id=new_job_id(), request=request, webhook_url=webhook_url, ttl_seconds=ttl_seconds)

    async def check_depth(reader: Any) -> None:
        if max_queue_depth is not None:
            depth = int(await reader.xlen(keys.stream))
            if depth >= max_queue_depth:
                raise QueueFull(depth, max_queue_depth)

    if idempotency_key is None:
        await check_depth(redis_client)
        async with redis_client.pipeline(transaction=True) as pipe:
            queue_new_job(pipe, keys, message)
            await pipe.execute()
        return message.job_id, True

    idem_key = keys.idempotency(idempotency_key)
    fingerprint = _request_fingerprint(request, webhook_url)
    async with redis_client.pipeline(transaction=True) as pipe:
        while True:
            try:
                # WATCH makes "key unused -> create job" atomic against a concurrent retry of the
                # same request: the loser's EXEC fails and it then finds the winner's job.
                await pipe.watch(idem_key)
                existing = await pipe.get(idem_key)
                if existing is not None:
                    job_id, _, stored_fingerprint = text(existing).partition(":")
                    if await pipe.exists(keys.job(job_id)):
                        await pipe.unwatch()
                        if stored_fingerprint != fingerprint:
                            raise IdempotencyConflict(job_id)
                        return job_id, False
                    # The job expired (or was never written): the key no longer protects anything.
                await check_depth(pipe)
                pipe.multi()
                pipe.set(idem_key, f"{message.job_id}:{fingerprint}", ex=ttl_seconds)
                queue_new_job(pipe, keys, message)
                await pipe.execute()
                return message.job_id, True
            except WatchError:
                continue


async def enqueue_render(
    redis: redis.asyncio.Redis,
    request: RenderRequest,
    *,
    prefix: str = DEFAULT_PREFIX,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    max_queue_depth: int | None = None,
) -> str:
    """Queue a render job and return its id.

    Writes the job record (status ``queued``) and its first event, then XADDs the message, all in
    one MULTI/EXEC so a job is either fully queued or not at all. With ``idempotency_key``, a second
    call with the same key and request returns the first job's id without queueing again, and
    raises :class:`IdempotencyConflict` if the request differs. Raises :class:`QueueFull` when
    ``max_queue_depth`` is given and the stream already holds that many jobs.
    """
    job_id, _ = await submit_render(
        redis,
        request,
        prefix=prefix,
        ttl_seconds=ttl_seconds,
        idempotency_key=idempotency_key,
        webhook_url=webhook_url,
        max_queue_depth=max_queue_depth,
    )
    return job_id


def job_urls(job_id: str, num_images: int, base_url: str = "") -> RenderJobUrls:
    base = f"{base_url.rstrip('/')}/v1/renders/{job_id}"
    return RenderJobUrls(self_=base, events=f"{base}/events", images=[f"{base}/images/{n}" for n in range(num_images)])


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def record_to_job(record: Mapping[str, str], base_url: str = "") -> RenderJob:
    """Turn a decoded job record hash into the API's view of the job."""
    job_id = record["id"]
    status = record.get("status", "queued")
    num_images = int(record.get("num_images") or 0) if status == "succeeded" else 0
    progress = None
    if record.get("progress_total"):
        progress = Progress(step=int(record.get("progress_step") or 0), total=int(record["progress_total"]))
    return RenderJob(
        id=job_id,
        status=status,  # type: ignore[arg-type]
        created_at=_float(record.get("created_at")) or 0.0,
        started_at=_float(record.get("started_at")),
        finished_at=_float(record.get("finished_at")),
        progress=progress,
        timings=json.loads(record.get("timings") or "{}"),
        error=record.get("error") or None,
        seeds=json.loads(record.get("seeds") or "[]"),
        model=record.get("model") or None,
        device=record.get("device") or None,
        num_images=num_images,
        worker=record.get("worker") or None,
        deliveries=int(record.get("deliveries") or 0),
        cancel_requested=record.get("cancel_requested") == "1",
        webhook=record.get("webhook_status") or None,
        urls=job_urls(job_id, num_images, base_url),
        request=RenderRequest.model_validate_json(record["request"]),
    )
