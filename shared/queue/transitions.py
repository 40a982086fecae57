"""Every state change of a job after submit, one function each (the table in :mod:`shared.queue`).

A transition only *buffers* commands on a ``MULTI`` pipeline, so the same function serves the
synchronous worker and the asyncio API; those that depend on the record run inside
:func:`transact` / :func:`atransact`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import redis
import redis.asyncio
from redis.exceptions import WatchError

from shared.jobs import TERMINAL_STATUSES, JobStatus
from shared.queue.errors import JobFinished, JobNotFound
from shared.queue.keys import (
    DEAD_LETTER_MAXLEN,
    DEFAULT_TTL_SECONDS,
    MESSAGE_FIELD,
    QUEUE_WAIT_SECONDS_BUCKETS,
    RENDER_SECONDS_BUCKETS,
    STEP_SECONDS_BUCKETS,
    WEBHOOK_GROUP,
    QueueKeys,
)
from shared.queue.record import Rec, decode_time, encode_time, initial_record
from shared.queue.wire import (
    QueueMessage,
    decode_hash,
    encode_message,
    make_event,
    queue_event,
    queue_observe,
)


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
    webhook_url: str | None = None,
) -> None:
    """Buffer a transition to a terminal status; the TTL restarts so results live ``ttl`` after the end.

    A job with a ``webhook_url`` gets its webhook delivery queued in the same transaction
    (:func:`_queue_webhook`): once a job has ended, its webhook cannot be forgotten.
    """
    assert status in TERMINAL_STATUSES
    fields: dict[str, str] = {Rec.STATUS: status, Rec.FINISHED_AT: encode_time(time.time())}
    if error:
        fields[Rec.ERROR] = error
    fields.update(record or {})
    if webhook_url:
        fields.update(_queue_webhook(pipe, keys, job_id, status))
    pipe.hset(keys.job(job_id), mapping=fields)
    pipe.expire(keys.job(job_id), ttl_seconds)
    queue_event(pipe, keys, job_id, make_event(status, error=error, message=message, worker=worker), ttl_seconds)
    pipe.hincrby(keys.metrics, f"jobs_total:{status}", 1)


def webhook_delivery_id(job_id: str, status: str) -> str:
    """The id of the webhook delivery of a job's end (a job ends once, so it is one delivery)."""
    return f"{job_id}.{status}"


def _queue_webhook(pipe: Any, keys: QueueKeys, job_id: str, status: str) -> dict[str, str]:
    """Queue the webhook delivery of a job that ends now; the record fields that say so."""
    delivery_id = webhook_delivery_id(job_id, status)
    pipe.xadd(keys.webhooks, {"job_id": job_id, "delivery_id": delivery_id, "event": f"render.{status}"})
    return {Rec.WEBHOOK_ID: delivery_id, Rec.WEBHOOK_STATUS: "pending", Rec.WEBHOOK_ATTEMPTS: "0"}


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



# --- claim ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What :func:`claim` decided for one delivery of a job."""

    deliveries: int
    token: str | None = None
    """The fencing token of this delivery when the job is now ``running`` on the claimer."""
    settled: JobStatus | None = None
    """Set when the job ended without rendering (canceled, or too many deliveries)."""


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
    if record.get(Rec.OWNER) == token and record.get(Rec.STATUS) == "running":
        # This very claim already applied (a retry after its reply was lost): nothing to write again.
        return Claim(deliveries=int(record.get(Rec.DELIVERIES) or 1), token=token)
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
        _queue_terminal(
            pipe, keys, job_id, "canceled", ttl, message="canceled", worker=worker, webhook_url=message.webhook_url
        )
        settled = "canceled"
    elif deliveries > max_deliveries:
        reason = (
            f"gave up after {deliveries - 1} deliveries: each worker that took this job "
            f"stopped responding before finishing it (limit {max_deliveries})"
        )
        _queue_terminal(pipe, keys, job_id, "failed", ttl, error=reason, worker=worker, webhook_url=message.webhook_url)
        _queue_dead_letter(pipe, keys, entry_id, message.model_dump_json(), reason, job_id)
        settled = "failed"
    if settled is not None:
        _queue_ack(pipe, keys, entry_id)
        return Claim(deliveries=deliveries - 1, settled=settled)
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


def _model_of(record: Mapping[str, str]) -> str | None:
    """The model a record's request names (its job's stream); None for the default model."""
    try:
        model = json.loads(record.get(Rec.REQUEST) or "{}").get("model")
    except (ValueError, AttributeError):
        return None
    return model if isinstance(model, str) else None


def request_cancel(pipe: Any, keys: QueueKeys, job_id: str, record: Mapping[str, str]) -> None:
    """Ask for a job to stop: a queued job is ``canceled`` at once, a running one at its worker's next check.

    A queued job also leaves the stream at once (``XDEL`` of the entry the record names), so it no
    longer counts toward the queue-depth limit; its webhook is queued like any other.
    Raises :class:`JobNotFound` / :class:`JobFinished`.
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
    _queue_terminal(
        pipe, keys, job_id, "canceled", ttl, message="canceled while queued", webhook_url=record.get(Rec.WEBHOOK_URL)
    )
    entry_id = record.get(Rec.ENTRY_ID)
    if not entry_id:
        # Enqueued without the entry id in its record (a plain-Redis client): the entry stays until
        # a worker meets it, sees "canceled" and acks it.
        return
    # The entry may already be in a worker's pending list (read, not yet claimed): that worker's
    # claim then finds it terminal and acks; XDEL here is what makes it stop counting.
    pipe.xdel(keys.stream_of(_model_of(record)), entry_id)


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

    Images must be stored before (:meth:`shared.queue.images.ImageStore.save`): once the record says ``succeeded``,
    every image it counts is readable. False, with nothing buffered, when the delivery no longer
    owns the job (it was reclaimed, so this entry is in another worker's pending list: no ack).
    """
    if not owns(record, delivery):
        return False
    if record.get(Rec.STATUS) in TERMINAL_STATUSES:
        # Already ended: by this very transition (retried after its reply was lost) or by a claim that
        # settled a cancel while this worker was cut off. A terminal status never changes.
        return True
    ttl = delivery.message.ttl_seconds
    _queue_terminal(
        pipe, keys, delivery.job_id, status, ttl, record=fields, error=error, message=message, worker=worker,
        webhook_url=delivery.message.webhook_url or record.get(Rec.WEBHOOK_URL),
    )  # fmt: skip
    if render_seconds is not None:
        queue_observe(pipe, keys, "render_seconds", render_seconds, RENDER_SECONDS_BUCKETS)
    _queue_ack(pipe, keys, delivery.entry_id)
    return True


def fail(
    pipe: Any, keys: QueueKeys, record: Mapping[str, str], delivery: Delivery, error: str, *, worker: str
) -> bool:
    """:func:`finish` as ``failed`` with ``error``, plus a copy of the message on the dead-letter stream."""
    if record.get(Rec.STATUS) in TERMINAL_STATUSES:
        return owns(record, delivery)  # see finish: nothing to write again
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
    if record.get(Rec.STATUS) in TERMINAL_STATUSES:
        return True  # ended meanwhile (a cancel settled by a claim): nothing to give back
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


def webhook_attempted(
    pipe: Any,
    keys: QueueKeys,
    record: Mapping[str, str],
    *,
    job_id: str,
    entry_id: str,
    outcome: str,
    attempts: int,
    over: bool,
) -> None:
    """A POST of the webhook delivery ``entry_id`` ended: its outcome and the attempt count on the record
    (unless the record expired: an HSET would make a key without a TTL); a delivery that is ``over``
    (delivered, rejected, refused or out of attempts) leaves ``{p}webhooks``, acked and deleted."""
    if record:
        pipe.hset(keys.job(job_id), mapping={Rec.WEBHOOK_STATUS: outcome, Rec.WEBHOOK_ATTEMPTS: str(attempts)})
    if over:
        pipe.xack(keys.webhooks, WEBHOOK_GROUP, entry_id)
        pipe.xdel(keys.webhooks, entry_id)


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
