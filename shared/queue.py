"""The render job's state machine in Redis: key names, the JSON message, the record and every transition.

Everything here is plain Redis (hashes, strings, streams with one consumer group) so that any
language can enqueue a job; ``docs/queue-protocol.md`` is the prose version of this module, section
by section, and must stay in step with it. No torch or FastAPI here: the planner imports this module.

A job moves ``queued -> running -> succeeded | failed | canceled`` (and ``running -> queued`` when a
stopping worker gives it back). Each transition is one function below, side by side:

=================  =====================================================  ==========================
transition         what it writes, in one Redis transaction               who calls it
=================  =====================================================  ==========================
:func:`submit`     record, ``queued`` event, stream entry (Lua script:    API, planner, any client
                   idempotency and queue-depth checks are atomic with it)
:func:`claim`      ``running`` + fresh owner token, or settle at once      worker, after XREADGROUP
:func:`progress`   step counters and a ``progress`` event                  worker, each step
:func:`request_cancel`  ``cancel_requested``; a queued job ends at once    API (DELETE)
:func:`finish`     terminal record + event, XACK + XDEL                    worker
:func:`fail`       :func:`finish` as ``failed`` plus a dead-letter copy    worker
:func:`requeue`    a fresh entry, the old one acked, record ``queued``     worker on shutdown
:func:`dead_letter`  a message nobody can run, acked and copied aside      worker
=================  =====================================================  ==========================

Except :func:`submit`, a transition only *buffers* commands on a ``MULTI`` pipeline: the same
function serves the synchronous worker and the asyncio API. Transitions that depend on the record
run inside :func:`transact` / :func:`atransact`, which ``WATCH`` the record, read it, and retry
the whole decision if it changed before ``EXEC``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

import redis
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

DEAD_LETTER_MAXLEN = 10_000
"""The dead-letter stream is capped (approximately, which is cheap) so a flood of bad jobs can't grow it."""

JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Ids we mint are 32 hex chars; other enqueuers may pick any id matching this."""

RENDER_SECONDS_BUCKETS: tuple[float, ...] = (0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)
QUEUE_WAIT_SECONDS_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
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

    @property
    def image_expiry(self) -> str:
        """Sorted set: object key in the S3 image store -> Unix time it is due for deletion."""
        return f"{self.prefix}images:expiry"

    def worker(self, name: str) -> str:
        """Hash describing a live worker (model, device, pid); expires unless heartbeats refresh it."""
        return f"{self.prefix}worker:{name}"

    def idempotency(self, key: str) -> str:
        # Hashed so that any client-chosen string (spaces, 10 kB, ...) makes a sane key.
        return f"{self.prefix}idempotency:{hashlib.sha256(key.encode()).hexdigest()}"

    @property
    def webhook_outbox(self) -> str:
        """List of job ids whose webhook is due but whose stream entry is gone (canceled while queued);
        any worker pops it and delivers."""
        return f"{self.prefix}webhooks:outbox"


class Rec:
    """Field names of the job record hash ``{p}render:{id}``. Every value is a string:

    times are Unix seconds as ``repr(float)``; counts are decimal integers; ``request``, ``seeds``,
    ``timings`` and ``image_keys`` are JSON; ``cancel_requested`` is ``"1"`` once set. Absent fields read as unset.
    """

    ID = "id"
    STATUS = "status"
    REQUEST = "request"
    CREATED_AT = "created_at"
    STARTED_AT = "started_at"
    FINISHED_AT = "finished_at"
    TTL_SECONDS = "ttl_seconds"
    DELIVERIES = "deliveries"
    NUM_IMAGES = "num_images"
    WEBHOOK_URL = "webhook_url"
    WEBHOOK_STATUS = "webhook_status"
    WORKER = "worker"
    OWNER = "owner"
    ENTRY_ID = "entry_id"
    PROGRESS_STEP = "progress_step"
    PROGRESS_TOTAL = "progress_total"
    CANCEL_REQUESTED = "cancel_requested"
    ERROR = "error"
    SEEDS = "seeds"
    TIMINGS = "timings"
    MODEL = "model"
    DEVICE = "device"
    IMAGE_KEYS = "image_keys"
    """JSON list of the images' object keys when they live in S3; absent when they are in Redis."""


def encode_time(seconds: float) -> str:
    return repr(float(seconds))


def decode_time(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


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


def initial_record(message: QueueMessage) -> dict[str, str]:
    """The job record hash as first written (status ``queued``). Absent fields read as unset."""
    record = {
        Rec.ID: message.job_id,
        Rec.STATUS: "queued",
        Rec.REQUEST: message.request.model_dump_json(),
        Rec.CREATED_AT: encode_time(message.enqueued_at),
        Rec.TTL_SECONDS: str(message.ttl_seconds),
        Rec.DELIVERIES: "0",
        Rec.NUM_IMAGES: "0",
    }
    if message.webhook_url:
        record[Rec.WEBHOOK_URL] = message.webhook_url
    return record


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


def _queue_terminal(
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
    fields: dict[str, str] = {Rec.STATUS: status, Rec.FINISHED_AT: encode_time(time.time())}
    if error:
        fields[Rec.ERROR] = error
    fields.update(record or {})
    pipe.hset(keys.job(job_id), mapping=fields)
    pipe.expire(keys.job(job_id), ttl_seconds)
    queue_event(pipe, keys, job_id, make_event(status, error=error, message=message, worker=worker), ttl_seconds)
    pipe.hincrby(keys.metrics, f"jobs_total:{status}", 1)


def _queue_ack(pipe: Any, keys: QueueKeys, entry_id: str) -> None:
    """The entry is done with: off the group's pending list and off the stream (so it stops counting)."""
    pipe.xack(keys.stream, keys.group, entry_id)
    pipe.xdel(keys.stream, entry_id)


# --- running a transition ------------------------------------------------------------------------

T = TypeVar("T")


def transact(client: redis.Redis, keys: QueueKeys, job_id: str, build: Callable[[Any, dict[str, str]], T]) -> T:
    """Run ``build(pipe, record)`` as one MULTI/EXEC that applies only if the record did not change
    since it was read (``WATCH``); otherwise read again and rebuild. For the synchronous worker."""
    job_key = keys.job(job_id)
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(job_key)
                record = decode_hash(pipe.hgetall(job_key))
                pipe.multi()
                result = build(pipe, record)
                pipe.execute()
                return result
            except WatchError:
                continue


async def atransact(
    client: redis.asyncio.Redis, keys: QueueKeys, job_id: str, build: Callable[[Any, dict[str, str]], T]
) -> T:
    """:func:`transact` for an asyncio client (the API)."""
    job_key = keys.job(job_id)
    async with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(job_key)
                record = decode_hash(await pipe.hgetall(job_key))
                pipe.multi()
                result = build(pipe, record)
                await pipe.execute()
                return result
            except WatchError:
                continue


# --- submit --------------------------------------------------------------------------------------

SUBMIT_SCRIPT = """
local has_key = ARGV[5] ~= ''
if has_key then
  local existing = redis.call('GET', KEYS[5])
  if existing then
    local job_id, fingerprint = string.match(existing, '^([^:]*):(.*)$')
    if job_id and redis.call('EXISTS', ARGV[6] .. job_id) == 1 then
      return {'replay', job_id, fingerprint}
    end
  end
end
local limit = tonumber(ARGV[1])
if limit > 0 then
  local depth = redis.call('XLEN', KEYS[1])
  if depth >= limit then return {'full', tostring(depth)} end
end
local ttl = tonumber(ARGV[2])
local entry = redis.call('XADD', KEYS[1], '*', '$MESSAGE_FIELD', ARGV[3])
local record = {}
for i = 8, #ARGV do record[#record + 1] = ARGV[i] end
record[#record + 1] = '$ENTRY_ID'
record[#record + 1] = entry
redis.call('HSET', KEYS[2], unpack(record))
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('XADD', KEYS[3], '*', '$EVENT_FIELD', ARGV[4])
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('HINCRBY', KEYS[4], 'jobs_submitted_total', 1)
if has_key then redis.call('SET', KEYS[5], ARGV[5], 'EX', ttl) end
return {'created', entry}
""".replace("$MESSAGE_FIELD", MESSAGE_FIELD).replace("$EVENT_FIELD", EVENT_FIELD).replace("$ENTRY_ID", Rec.ENTRY_ID)
"""The Lua script of :func:`submit`, for enqueuers in any language (``EVAL SUBMIT_SCRIPT 5 ...``).

One script, so "is the key already used / is the queue full" and the enqueue are one atomic step:
concurrent submits can neither overshoot the depth limit nor both create a job for one key.
KEYS: stream, job record, job events, metrics, idempotency key (any key, e.g. the stream, if none).
ARGV: max depth (0: no limit), ttl, message JSON, ``queued`` event JSON, idempotency value
``{id}:{fingerprint}`` ("" if none), job key prefix ``{p}render:``, fingerprint, then the record's
field/value pairs. Answers ``created, <entry id>`` / ``replay, <job id>, <fingerprint>`` / ``full, <depth>``.
"""


class Submitted(NamedTuple):
    job_id: str
    created: bool
    """False: an idempotent replay of an earlier submit; ``job_id`` is that job's."""


def _request_fingerprint(request: RenderRequest, webhook_url: str | None) -> str:
    body = json.dumps({"request": request.model_dump(mode="json"), "webhook_url": webhook_url}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


async def submit(
    client: redis.asyncio.Redis,
    request: RenderRequest,
    *,
    prefix: str = DEFAULT_PREFIX,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    max_queue_depth: int | None = None,
) -> Submitted:
    """Queue a render job: record (status ``queued``), first event and stream entry, all at once.

    With ``idempotency_key``, a second call with the same key and request returns the first job
    (``created`` False) without queueing again, and raises :class:`IdempotencyConflict` if the
    request differs. Raises :class:`QueueFull` when ``max_queue_depth`` is given and the stream
    already holds that many jobs. Both checks run inside the same Lua script as the enqueue.
    """
    keys = QueueKeys(prefix)
    message = QueueMessage(job_id=new_job_id(), request=request, webhook_url=webhook_url, ttl_seconds=ttl_seconds)
    fingerprint = _request_fingerprint(request, webhook_url) if idempotency_key is not None else ""
    idem_key = keys.idempotency(idempotency_key) if idempotency_key is not None else keys.stream
    record = [part for pair in initial_record(message).items() for part in pair]
    event = make_event("queued").model_dump_json(exclude_none=True)
    answer = await client.eval(
        SUBMIT_SCRIPT,
        5,
        keys.stream,
        keys.job(message.job_id),
        keys.events(message.job_id),
        keys.metrics,
        idem_key,
        max_queue_depth or 0,
        ttl_seconds,
        message.model_dump_json(),
        event,
        f"{message.job_id}:{fingerprint}" if idempotency_key is not None else "",
        keys.job(""),
        fingerprint,
        *record,
    )
    outcome = [text(part) for part in answer]
    if outcome[0] == "full":
        raise QueueFull(int(outcome[1]), max_queue_depth or 0)
    if outcome[0] == "replay":
        if outcome[2] != fingerprint:
            raise IdempotencyConflict(outcome[1])
        return Submitted(outcome[1], False)
    return Submitted(message.job_id, True)


# --- claim ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What :func:`claim` decided for one delivery of a job."""

    deliveries: int
    token: str | None = None
    """The fencing token of this delivery when the job is now ``running`` on the claimer."""
    settled: JobStatus | None = None
    """Set when the job ended without rendering (canceled, or too many deliveries)."""
    notify: bool = False
    """Whether the claimer should send the webhook (not yet sent for this terminal status)."""


def claim(
    pipe: Any,
    keys: QueueKeys,
    record: Mapping[str, str],
    *,
    entry_id: str,
    message: QueueMessage,
    worker: str,
    token: str,
    max_deliveries: int,
) -> Claim:
    """A worker took stream entry ``entry_id``: mark the job ``running`` under ``token``, or settle it.

    ``record`` is the job record as read under WATCH (empty for a job enqueued with XADD alone,
    whose record the claimer then writes). A record already terminal (canceled while queued, or
    finished by a worker that died before its XACK) or with ``cancel_requested`` is settled and
    acked; past ``max_deliveries`` the job fails and is dead-lettered.
    """
    job_id, ttl = message.job_id, message.ttl_seconds
    current = dict(record) or initial_record(message)
    if not record:
        pipe.hset(keys.job(job_id), mapping=current)
        # Every job's history starts with "queued", however it was enqueued.
        queue_event(pipe, keys, job_id, make_event("queued"), ttl)
    status = current.get(Rec.STATUS, "queued")
    deliveries = int(current.get(Rec.DELIVERIES) or 0) + 1
    settled: JobStatus | None = None
    if status in TERMINAL_STATUSES:
        settled = status  # type: ignore[assignment]
    elif current.get(Rec.CANCEL_REQUESTED) == "1":
        # Canceled while running on a worker that then died.
        _queue_terminal(pipe, keys, job_id, "canceled", ttl, message="canceled", worker=worker)
        settled = "canceled"
    elif deliveries > max_deliveries:
        reason = (
            f"gave up after {deliveries - 1} deliveries: each worker that took this job "
            f"stopped responding before finishing it (limit {max_deliveries})"
        )
        _queue_terminal(pipe, keys, job_id, "failed", ttl, error=reason, worker=worker)
        _queue_dead_letter(pipe, keys, entry_id, message.model_dump_json(), reason, job_id)
        settled = "failed"
    if settled is not None:
        _queue_ack(pipe, keys, entry_id)
        # Canceled while queued with its entry id recorded: request_cancel put it in the webhook outbox.
        via_outbox = status == "canceled" and bool(current.get(Rec.ENTRY_ID)) and not current.get(Rec.WORKER)
        notify = status not in TERMINAL_STATUSES or not (current.get(Rec.WEBHOOK_STATUS) or via_outbox)
        return Claim(deliveries=deliveries - 1, settled=settled, notify=notify)
    pipe.hset(
        keys.job(job_id),
        mapping={
            Rec.STATUS: "running",
            Rec.STARTED_AT: encode_time(time.time()),
            Rec.WORKER: worker,
            Rec.OWNER: token,
            Rec.DELIVERIES: str(deliveries),
            Rec.ENTRY_ID: entry_id,
            Rec.PROGRESS_STEP: "0",
            Rec.PROGRESS_TOTAL: str(message.request.steps),
        },
    )
    pipe.expire(keys.job(job_id), ttl)
    queue_event(pipe, keys, job_id, make_event("running", worker=worker, message=f"delivery {deliveries}"), ttl)
    created_at = decode_time(current.get(Rec.CREATED_AT))
    if created_at is not None:  # queue wait: submission to the start of this run
        queue_observe(pipe, keys, "queue_wait_seconds", max(0.0, time.time() - created_at), QUEUE_WAIT_SECONDS_BUCKETS)
    return Claim(deliveries=deliveries, token=token)


# --- progress ------------------------------------------------------------------------------------


def progress(
    pipe: Any, keys: QueueKeys, job_id: str, ttl_seconds: int, *, done: int, total: int, step_seconds: float
) -> None:
    """Steps done so far: record counters, a ``progress`` event, the step-time histogram.

    Best effort and unfenced (a plain pipeline is enough): a lost progress update is harmless.
    """
    pipe.hset(keys.job(job_id), mapping={Rec.PROGRESS_STEP: str(done), Rec.PROGRESS_TOTAL: str(total)})
    queue_event(pipe, keys, job_id, make_event("running", "progress", step=done, total=total), ttl_seconds)
    queue_observe(pipe, keys, "step_seconds", step_seconds, STEP_SECONDS_BUCKETS)


# --- request_cancel ------------------------------------------------------------------------------


class JobNotFound(LookupError):
    http_status = 404  # read by the API's problem handler

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no render job with id {job_id!r} (unknown, or expired after its TTL)")


class JobFinished(Exception):
    """Cancel of a job that already ended."""

    http_status = 409

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"render job {job_id} already ended ({status}); nothing to cancel")
        self.status = status


def request_cancel(pipe: Any, keys: QueueKeys, job_id: str, record: Mapping[str, str]) -> None:
    """Ask for a job to stop: a queued job is ``canceled`` at once, a running one at its worker's next check.

    A queued job also leaves the stream at once (``XDEL`` of the entry the record names), so it no
    longer counts toward the queue-depth limit; its webhook goes through the outbox instead of
    waiting for a worker to meet the entry. Raises :class:`JobNotFound` / :class:`JobFinished`.
    """
    if not record:
        raise JobNotFound(job_id)
    status = record.get(Rec.STATUS, "queued")
    if status in TERMINAL_STATUSES:
        raise JobFinished(job_id, status)
    ttl = int(record.get(Rec.TTL_SECONDS) or DEFAULT_TTL_SECONDS)
    pipe.hset(keys.job(job_id), Rec.CANCEL_REQUESTED, "1")
    if status != "queued":
        return
    _queue_terminal(pipe, keys, job_id, "canceled", ttl, message="canceled while queued")
    entry_id = record.get(Rec.ENTRY_ID)
    if not entry_id:
        # Enqueued without the entry id in its record (a plain-Redis client): the entry stays until
        # a worker meets it, sees "canceled", acks it and sends the webhook.
        return
    # The entry may already be in a worker's pending list (read, not yet claimed): that worker's
    # claim then finds it terminal and acks; XDEL here is what makes it stop counting.
    pipe.xdel(keys.stream, entry_id)
    if record.get(Rec.WEBHOOK_URL):
        pipe.rpush(keys.webhook_outbox, job_id)


# --- finish / fail / requeue / dead_letter -------------------------------------------------------


class Delivery(NamedTuple):
    """The delivery a worker is running: the terminal transitions are fenced by its ``token``."""

    entry_id: str
    message: QueueMessage
    token: str
    deliveries: int

    @property
    def job_id(self) -> str:
        return self.message.job_id


def owns(record: Mapping[str, str], delivery: Delivery) -> bool:
    """Whether ``delivery`` still owns the job; if not, another worker reclaimed it and its run wins."""
    return record.get(Rec.OWNER) == delivery.token


def finish(
    pipe: Any,
    keys: QueueKeys,
    record: Mapping[str, str],
    delivery: Delivery,
    status: JobStatus,
    *,
    worker: str,
    fields: Mapping[str, str] | None = None,
    render_seconds: float | None = None,
    error: str | None = None,
    message: str | None = None,
) -> bool:
    """End the job (``succeeded`` or ``canceled``): terminal record and event, metrics, XACK + XDEL.

    Images must be stored before (see :func:`store_images`): once the record says ``succeeded``,
    every image it counts is readable. False, with nothing buffered, when the delivery no longer
    owns the job (it was reclaimed, so this entry is in another worker's pending list: no ack).
    """
    if not owns(record, delivery):
        return False
    ttl = delivery.message.ttl_seconds
    _queue_terminal(
        pipe, keys, delivery.job_id, status, ttl, record=fields, error=error, message=message, worker=worker
    )
    if render_seconds is not None:
        queue_observe(pipe, keys, "render_seconds", render_seconds, RENDER_SECONDS_BUCKETS)
    _queue_ack(pipe, keys, delivery.entry_id)
    return True


def fail(
    pipe: Any, keys: QueueKeys, record: Mapping[str, str], delivery: Delivery, error: str, *, worker: str
) -> bool:
    """:func:`finish` as ``failed`` with ``error``, plus a copy of the message on the dead-letter stream."""
    if not finish(pipe, keys, record, delivery, "failed", worker=worker, error=error):
        return False
    _queue_dead_letter(pipe, keys, delivery.entry_id, delivery.message.model_dump_json(), error, delivery.job_id)
    return True


def requeue(
    pipe: Any, keys: QueueKeys, record: Mapping[str, str], delivery: Delivery, *, worker: str
) -> bool:
    """Give the job back (its worker is shutting down): a fresh stream entry, the old one acked, the
    record ``queued`` again. A shutdown is not the job's fault, so this delivery does not count."""
    if not owns(record, delivery):
        return False
    job_key = keys.job(delivery.job_id)
    _queue_ack(pipe, keys, delivery.entry_id)
    pipe.xadd(keys.stream, encode_message(delivery.message))
    pipe.hset(
        job_key,
        mapping={
            Rec.STATUS: "queued",
            Rec.OWNER: "",
            Rec.WORKER: "",
            Rec.PROGRESS_STEP: "0",
            Rec.DELIVERIES: str(delivery.deliveries - 1),
        },
    )
    # The new entry's id is known only after the XADD; without it a cancel leaves the entry to a worker.
    pipe.hdel(job_key, Rec.STARTED_AT, Rec.ENTRY_ID)
    event = make_event("queued", message=f"requeued: worker {worker} shut down")
    queue_event(pipe, keys, delivery.job_id, event, delivery.message.ttl_seconds)
    return True


def _queue_dead_letter(
    pipe: Any, keys: QueueKeys, entry_id: str, raw_message: str, reason: str, job_id: str | None
) -> None:
    fields = {MESSAGE_FIELD: raw_message, "reason": reason[:2000], "entry_id": entry_id, "failed_at": repr(time.time())}
    if job_id is not None:
        fields["job_id"] = job_id
    pipe.xadd(keys.dead_letter, fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)


def dead_letter(pipe: Any, keys: QueueKeys, entry_id: str, fields: Mapping[Any, Any], reason: str) -> None:
    """A stream entry no worker can run (malformed, unknown version): copy it aside with ``reason``, ack it."""
    raw = decode_hash(fields)
    _queue_dead_letter(pipe, keys, entry_id, raw.get(MESSAGE_FIELD, json.dumps(raw)), reason, None)
    _queue_ack(pipe, keys, entry_id)


def store_images(pipe: Any, keys: QueueKeys, job_id: str, pngs: list[bytes], ttl_seconds: int) -> None:
    """Buffer the PNGs of a finished render (written before :func:`finish`, outside its transaction)."""
    for index, png in enumerate(pngs):
        pipe.set(keys.image(job_id, index), png, ex=ttl_seconds)


def job_urls(job_id: str, num_images: int, base_url: str = "") -> RenderJobUrls:
    base = f"{base_url.rstrip('/')}/v1/renders/{job_id}"
    return RenderJobUrls(self_=base, events=f"{base}/events", images=[f"{base}/images/{n}" for n in range(num_images)])


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
        status=status,
        created_at=decode_time(record.get("created_at")) or 0.0,
        started_at=decode_time(record.get("started_at")),
        finished_at=decode_time(record.get("finished_at")),
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
