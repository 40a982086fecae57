"""The render worker: one process, one device, one job at a time from the Redis stream.

Guarantees, and how they are kept:

* **A job is rendered by one live worker.** ``XREADGROUP`` hands each entry to one consumer. While
  rendering, a heartbeat thread re-claims the entry for its own consumer (``XCLAIM ... JUSTID``),
  which resets the entry's idle time without counting a delivery, so it never reaches the
  reclaim deadline while its worker lives.
* **A dead worker's job is finished by another.** Idle workers run ``XAUTOCLAIM`` for entries idle
  past ``claim_idle_seconds``; the record's ``deliveries`` counter fails the job (and copies it to
  the dead-letter stream) after ``max_deliveries``, so a job that kills workers cannot loop forever.
* **Results are durable before the ack.** PNGs are written first, then one MULTI/EXEC marks the
  record terminal, appends the event and ``XACK``\\s + ``XDEL``\\s the entry. That transaction is
  fenced by the record's ``owner`` token (WATCH): a worker that was cut off long enough for its
  job to be reclaimed does not overwrite or ack the new owner's work.
* **Redis outages are waited out.** Reads and result writes retry with exponential backoff
  (tenacity); per-step progress is best effort and never stalls rendering.
* **SIGTERM** stops taking jobs; the current one is finished if it ends within
  ``shutdown_grace_seconds``, otherwise canceled and put back on the stream for another worker.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ResponseError, WatchError
from redis.retry import Retry
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from render_service.engine import ModelNotFoundError, RenderCanceled, RenderEngine
from render_service.settings import RenderSettings, configure_logging
from render_service.worker.webhooks import deliver
from shared.jobs import TERMINAL_STATUSES, JobStatus
from shared.queue import (
    MESSAGE_FIELD,
    RENDER_SECONDS_BUCKETS,
    STEP_SECONDS_BUCKETS,
    QueueMessage,
    decode_hash,
    decode_message,
    encode_message,
    initial_record,
    make_event,
    queue_event,
    queue_observe,
    queue_terminal,
    record_to_job,
    text,
)

log = logging.getLogger("render_service.worker")

REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    BusyLoadingError,  # "LOADING": Redis is replaying its AOF after a restart
)

T = TypeVar("T")

DEAD_LETTER_MAXLEN = 10_000


@dataclass
class _Job:
    """The job this worker is rendering now."""

    entry_id: str
    message: QueueMessage
    token: str
    deliveries: int
    cancel_reason: str | None = None

    @property
    def job_id(self) -> str:
        return self.message.job_id

    @property
    def ttl(self) -> int:
        return self.message.ttl_seconds


class _Stopping(Exception):
    """Raised out of a retry loop when shutdown was requested while Redis was unreachable."""


class Worker:
    def __init__(self, settings: RenderSettings, engine: RenderEngine) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.engine = engine
        self.name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        url = settings.redis_url
        # The main client blocks in XREADGROUP, so its socket timeout must outlast the block time.
        self.redis = redis.Redis.from_url(
            url, protocol=2, socket_timeout=settings.block_seconds + 10, socket_connect_timeout=5
        )
        # Per-step progress/cancel checks and heartbeats use short timeouts and no client-side
        # retries: during an outage they fail fast instead of stalling the render.
        fast = {"protocol": 2, "socket_timeout": 2, "socket_connect_timeout": 2, "retry": Retry(NoBackoff(), 0)}
        self.step_redis = redis.Redis.from_url(url, **fast)
        self.heartbeat_redis = redis.Redis.from_url(url, **fast)
        self.current: _Job | None = None
        self._stop_requested_at: float | None = None
        self._exit = threading.Event()
        self._webhooks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="webhook")

    # --- lifecycle -----------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
            log.info("stop requested; finishing the current job", extra={"fields": {"worker": self.name}})
        else:
            # A second signal: don't wait out the grace period, requeue now.
            self._stop_requested_at = time.monotonic() - self.settings.shutdown_grace_seconds - 1

    @property
    def stopping(self) -> bool:
        return self._stop_requested_at is not None

    def _grace_expired(self) -> bool:
        return (
            self._stop_requested_at is not None
            and time.monotonic() - self._stop_requested_at > self.settings.shutdown_grace_seconds
        )

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> None:
        log.info(
            "worker starting",
            extra={"fields": {"worker": self.name, "model": self.engine.model_name, "device": self.engine.device}},
        )
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        try:
            self._retry(self._ensure_group, "create consumer group", forever=True)
            heartbeat.start()
            while not self.stopping:
                entry = self._retry(self._next_entry, "read the job stream", forever=True)
                if entry is not None:
                    self._handle(*entry)
        except _Stopping:
            pass
        finally:
            self._exit.set()
            self._webhooks.shutdown(wait=True)
            try:
                self.heartbeat_redis.zrem(self.keys.workers, self.name)
                self.heartbeat_redis.delete(self.keys.worker(self.name))
            except REDIS_ERRORS:
                pass
            log.info("worker stopped", extra={"fields": {"worker": self.name}})

    # --- Redis retries -------------------------------------------------------------------------

    def _retry(self, fn: Callable[[], T], what: str, *, forever: bool = False) -> T:
        """Call ``fn``, retrying Redis connection errors with exponential backoff.

        ``forever`` is for reads: an idle worker can wait for Redis as long as it takes, but gives
        up promptly on shutdown. Writes of results retry for ``redis_retry_seconds``; after that the
        entry stays pending and another worker reclaims it, so the job is still not lost.
        """

        def stop_on_shutdown(state: RetryCallState) -> bool:
            return self.stopping and self.current is None

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "redis unavailable, retrying",
                extra={
                    "fields": {"worker": self.name, "action": what, "attempt": state.attempt_number, "error": repr(exc)}
                },
            )

        retrying = Retrying(
            retry=retry_if_exception_type(REDIS_ERRORS),
            wait=wait_exponential_jitter(initial=0.1, max=5.0),
            stop=stop_on_shutdown if forever else stop_after_delay(self.settings.redis_retry_seconds),
            before_sleep=before_sleep,
            reraise=not forever,
        )
        try:
            return retrying(fn)
        except Exception as exc:
            if forever and self.stopping:
                raise _Stopping from exc
            raise

    def _ensure_group(self) -> None:
        try:
            # id 0: a fresh group also delivers entries enqueued before any worker existed.
            self.redis.xgroup_create(self.keys.stream, self.keys.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- taking jobs ---------------------------------------------------------------------------

    def _next_entry(self) -> tuple[str, dict[Any, Any]] | None:
        keys = self.keys
        try:
            # Reclaim first: an abandoned job is older than anything new on the stream.
            reply = self.redis.xautoclaim(
                keys.stream,
                keys.group,
                self.name,
                min_idle_time=int(self.settings.claim_idle_seconds * 1000),
                start_id="0-0",
                count=1,
            )
            # Redis 7 adds a third element: ids of pending entries that were deleted meanwhile.
            claimed, deleted = reply[1], (reply[2] if len(reply) > 2 else [])
            if deleted:
                self.redis.xack(keys.stream, keys.group, *deleted)
            for entry_id, fields in claimed:
                if fields:
                    log.info(
                        "reclaimed an abandoned job",
                        extra={"fields": {"worker": self.name, "entry": text(entry_id)}},
                    )
                    return text(entry_id), fields
                self.redis.xack(keys.stream, keys.group, entry_id)  # Redis 6.2: a deleted entry, nil fields
            if self.stopping:
                return None
            answer = self.redis.xreadgroup(
                keys.group, self.name, {keys.stream: ">"}, count=1, block=int(self.settings.block_seconds * 1000)
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                # The stream vanished (a Redis without persistence restarted): recreate and go on.
                self._ensure_group()
                return None
            raise
        for _stream, entries in answer or []:
            for entry_id, fields in entries:
                return text(entry_id), fields
        return None

    def _handle(self, entry_id: str, fields: dict[Any, Any]) -> None:
        try:
            message = decode_message(fields)
        except ValueError as exc:
            reason = str(exc)
            self._retry(lambda: self._dead_letter_malformed(entry_id, fields, reason), "dead-letter")
            return
        job = self._retry(lambda: self._start(entry_id, message), "start job")
        if job is None:
            return
        self.current = job
        try:
            self._render(job)
        finally:
            self.current = None

    def _dead_letter_malformed(self, entry_id: str, fields: dict[Any, Any], reason: str) -> None:
        log.error("malformed queue message", extra={"fields": {"entry": entry_id, "error": reason}})
        keys = self.keys
        raw = decode_hash(fields)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                keys.dead_letter,
                {
                    MESSAGE_FIELD: raw.get(MESSAGE_FIELD, json.dumps(raw)),
                    "reason": f"malformed message: {reason}"[:2000],
                    "entry_id": entry_id,
                    "failed_at": repr(time.time()),
                },
                maxlen=DEAD_LETTER_MAXLEN,
                approximate=True,
            )
            pipe.xack(keys.stream, keys.group, entry_id)
            pipe.xdel(keys.stream, entry_id)
            pipe.execute()

    def _start(self, entry_id: str, message: QueueMessage) -> _Job | None:
        """Mark the job running (or settle it at once); None when there is nothing to render."""
        keys = self.keys
        job_key = keys.job(message.job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(job_key)
                    raw = decode_hash(pipe.hgetall(job_key))
                    # A plain-Redis enqueuer may XADD only the message; the record is then ours to make.
                    record = raw or initial_record(message)
                    status = record.get("status", "queued")
                    deliveries = int(record.get("deliveries") or 0) + 1
                    pipe.multi()
                    if not raw:
                        pipe.hset(job_key, mapping=record)
                        # Every job's history starts with "queued", however it was enqueued.
                        queue_event(pipe, keys, message.job_id, make_event("queued"), message.ttl_seconds)
                    settled: JobStatus | None = None
                    if status in TERMINAL_STATUSES:
                        # Canceled while queued (or finished by a worker that died before its XACK).
                        settled = status  # type: ignore[assignment]
                    elif record.get("cancel_requested") == "1":
                        # Canceled while running on a worker that then died.
                        queue_terminal(
                            pipe,
                            keys,
                            message.job_id,
                            "canceled",
                            message.ttl_seconds,
                            message="canceled",
                            worker=self.name,
                        )
                        settled = "canceled"
                    elif deliveries > self.settings.max_deliveries:
                        reason = (
                            f"gave up after {deliveries - 1} deliveries: each worker that took this job "
                            f"stopped responding before finishing it (limit {self.settings.max_deliveries})"
                        )
                        queue_terminal(
                            pipe, keys, message.job_id, "failed", message.ttl_seconds, error=reason, worker=self.name
                        )
                        self._queue_dead_letter(pipe, entry_id, message, reason)
                        settled = "failed"
                    if settled is not None:
                        pipe.xack(keys.stream, keys.group, entry_id)
                        pipe.xdel(keys.stream, entry_id)
                        pipe.execute()
                        log.info(
                            "job settled without rendering",
                            extra={"fields": {"job": message.job_id, "status": settled}},
                        )
                        if status not in TERMINAL_STATUSES or not record.get("webhook_status"):
                            self._schedule_webhook(message)
                        return None
                    token = f"{self.name}/{secrets.token_hex(4)}"
                    pipe.hset(
                        job_key,
                        mapping={
                            "status": "running",
                            "started_at": repr(time.time()),
                            "worker": self.name,
                            "owner": token,
                            "deliveries": str(deliveries),
                            "entry_id": entry_id,
                            "progress_step": "0",
                            "progress_total": str(message.request.steps),
                        },
                    )
                    pipe.expire(job_key, message.ttl_seconds)
                    queue_event(
                        pipe,
                        keys,
                        message.job_id,
                        make_event("running", worker=self.name, message=f"delivery {deliveries}"),
                        message.ttl_seconds,
                    )
                    pipe.execute()
                    log.info("job started", extra={"fields": {"job": message.job_id, "deliveries": deliveries}})
                    return _Job(entry_id=entry_id, message=message, token=token, deliveries=deliveries)
                except WatchError:
                    continue

    def _queue_dead_letter(self, pipe: Any, entry_id: str, message: QueueMessage, reason: str) -> None:
        # Capped (approximately, which is cheap) so a flood of bad jobs can't grow it without bound.
        pipe.xadd(
            self.keys.dead_letter,
            {
                MESSAGE_FIELD: message.model_dump_json(),
                "job_id": message.job_id,
                "reason": reason[:2000],
                "entry_id": entry_id,
                "failed_at": repr(time.time()),
            },
            maxlen=DEAD_LETTER_MAXLEN,
            approximate=True,
        )

    # --- rendering -----------------------------------------------------------------------------

    def _render(self, job: _Job) -> None:
        keys = self.keys
        job_key = keys.job(job.job_id)
        last_step = time.monotonic()

        def on_step(done: int, total: int) -> None:
            nonlocal last_step
            now = time.monotonic()
            seconds, last_step = now - last_step, now
            try:
                with self.step_redis.pipeline(transaction=False) as pipe:
                    pipe.hset(job_key, mapping={"progress_step": str(done), "progress_total": str(total)})
                    queue_event(
                        pipe, keys, job.job_id, make_event("running", "progress", step=done, total=total), job.ttl
                    )
                    queue_observe(pipe, keys, "step_seconds", seconds, STEP_SECONDS_BUCKETS)
                    pipe.execute()
            except REDIS_ERRORS:
                pass  # progress is best effort; only the final result must get through

        def should_cancel() -> bool:
            if self._grace_expired():
                job.cancel_reason = "shutdown"
                return True
            try:
                flag, owner = self.step_redis.hmget(job_key, ["cancel_requested", "owner"])
            except REDIS_ERRORS:
                return False  # can't tell during an outage; keep rendering and ask again next step
            if flag is not None and text(flag) == "1":
                job.cancel_reason = "user"
                return True
            if owner is not None and text(owner) != job.token:
                # Another worker reclaimed the job (we were cut off past the deadline): its run
                # wins, so stop spending the device on ours.
                job.cancel_reason = "superseded"
                return True
            return False

        started = time.monotonic()
        try:
            result = self.engine.render(job.message.request, on_step=on_step, should_cancel=should_cancel)
        except RenderCanceled:
            if job.cancel_reason == "superseded":
                log.warning(
                    "job was reclaimed by another worker; stopped rendering it", extra={"fields": {"job": job.job_id}}
                )
            elif job.cancel_reason == "shutdown":
                self._retry(lambda: self._requeue(job), "requeue job")
            else:
                self._retry(lambda: self._finish(job, "canceled", message="canceled while running"), "cancel job")
            return
        except Exception as exc:
            # Any engine failure fails this job (it would fail again), not the worker.
            log.exception("render failed", extra={"fields": {"job": job.job_id}})
            error = f"render failed: {type(exc).__name__}: {exc}"[:2000]
            self._retry(lambda: self._finish(job, "failed", error=error, dead_letter=True), "fail job")
            return
        render_seconds = time.monotonic() - started
        pngs = []
        for image in result.images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        timings = {**{k: float(v) for k, v in result.timings.items()}, "worker_total": render_seconds}
        fields = {
            "seeds": json.dumps([int(s) for s in result.seeds]),
            "timings": json.dumps(timings),
            "model": self.engine.model_name,
            "device": self.engine.device,
            "num_images": str(len(pngs)),
        }
        self._retry(
            lambda: self._finish(job, "succeeded", fields=fields, pngs=pngs, render_seconds=render_seconds),
            "store result",
        )

    def _while_owner(self, job: _Job, commands: Callable[[Any], None]) -> bool:
        """Run ``commands`` (buffered on a pipeline) in one MULTI/EXEC, only if this delivery still
        owns the job. False, with nothing written, if another worker has reclaimed it."""
        job_key = self.keys.job(job.job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(job_key)
                    owner = pipe.hget(job_key, "owner")
                    if owner is None or text(owner) != job.token:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    commands(pipe)
                    pipe.execute()
                    return True
                except WatchError:
                    continue  # the record changed under us (a heartbeat, a cancel): look again

    def _finish(
        self,
        job: _Job,
        status: JobStatus,
        *,
        fields: dict[str, str] | None = None,
        pngs: list[bytes] | None = None,
        render_seconds: float | None = None,
        error: str | None = None,
        message: str | None = None,
        dead_letter: bool = False,
    ) -> None:
        keys = self.keys
        if pngs:
            # Images go first and outside the transaction: once the record says "succeeded",
            # every image it counts is already readable.
            with self.redis.pipeline(transaction=False) as pipe:
                for index, png in enumerate(pngs):
                    pipe.set(keys.image(job.job_id, index), png, ex=job.ttl)
                pipe.execute()

        def write_result(pipe: Any) -> None:
            queue_terminal(
                pipe, keys, job.job_id, status, job.ttl, record=fields, error=error, message=message, worker=self.name
            )
            if render_seconds is not None:
                queue_observe(pipe, keys, "render_seconds", render_seconds, RENDER_SECONDS_BUCKETS)
            if dead_letter:
                self._queue_dead_letter(pipe, job.entry_id, job.message, error or status)
            pipe.xack(keys.stream, keys.group, job.entry_id)
            pipe.xdel(keys.stream, job.entry_id)

        if not self._while_owner(job, write_result):
            # Reclaimed by another worker while we were cut off: its run wins, and the entry is
            # now in its pending list, so we must not ack it either.
            extra = {"fields": {"job": job.job_id}}
            log.warning("job was reclaimed by another worker; dropping our result", extra=extra)
            return
        log.info("job finished", extra={"fields": {"job": job.job_id, "status": status, "error": error}})
        self._schedule_webhook(job.message)

    def _requeue(self, job: _Job) -> None:
        """Give the job back: a fresh stream entry, the old one acked, the record ``queued`` again."""
        keys = self.keys
        job_key = keys.job(job.job_id)

        def give_back(pipe: Any) -> None:
            pipe.xadd(keys.stream, encode_message(job.message))
            pipe.xack(keys.stream, keys.group, job.entry_id)
            pipe.xdel(keys.stream, job.entry_id)
            # A shutdown is not the job's fault: this delivery does not count towards the limit.
            pipe.hset(
                job_key,
                mapping={
                    "status": "queued",
                    "owner": "",
                    "worker": "",
                    "progress_step": "0",
                    "deliveries": str(job.deliveries - 1),
                },
            )
            pipe.hdel(job_key, "started_at")
            event = make_event("queued", message=f"requeued: worker {self.name} shut down")
            queue_event(pipe, keys, job.job_id, event, job.ttl)

        if not self._while_owner(job, give_back):
            return
        log.info("job requeued on shutdown", extra={"fields": {"job": job.job_id}})

    # --- webhooks ------------------------------------------------------------------------------

    def _schedule_webhook(self, message: QueueMessage) -> None:
        if message.webhook_url:
            # Off the render thread: a slow receiver must not hold up the next job.
            self._webhooks.submit(self._send_webhook, message)

    def _send_webhook(self, message: QueueMessage) -> None:
        assert message.webhook_url is not None
        settings = self.settings
        job_key = self.keys.job(message.job_id)
        try:
            record = decode_hash(self._retry(lambda: self.heartbeat_redis.hgetall(job_key), "read job"))
            if not record:
                return
            job = record_to_job(record, settings.public_url)
            body = job.model_dump_json(by_alias=True).encode()
            outcome = deliver(
                message.webhook_url,
                body,
                event=f"render.{job.status}",
                allow_private=settings.allow_private_webhooks,
                secret=settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
                max_attempts=settings.webhook_max_attempts,
                timeout=settings.webhook_timeout_seconds,
            )
            self._retry(lambda: self.heartbeat_redis.hset(job_key, "webhook_status", outcome), "record webhook")
            log.info("webhook sent", extra={"fields": {"job": message.job_id, "outcome": outcome}})
        except Exception:
            log.exception("webhook delivery crashed", extra={"fields": {"job": message.job_id}})

    # --- heartbeats ----------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        keys = self.keys
        while not self._exit.is_set():
            try:
                now = time.time()
                job = self.current
                with self.heartbeat_redis.pipeline(transaction=False) as pipe:
                    pipe.zadd(keys.workers, {self.name: now})
                    # Forget workers silent for many heartbeats (they died without unregistering).
                    pipe.zremrangebyscore(keys.workers, 0, now - 10 * interval)
                    pipe.hset(
                        keys.worker(self.name),
                        mapping={
                            "model": self.engine.model_name,
                            "device": self.engine.device,
                            "pid": os.getpid(),
                            "host": socket.gethostname(),
                            "job": job.job_id if job else "",
                        },
                    )
                    pipe.expire(keys.worker(self.name), max(1, int(3 * interval) + 1))
                    pipe.execute()
                if job is not None:
                    self._touch(job)
            except REDIS_ERRORS as exc:
                log.warning("heartbeat failed", extra={"fields": {"worker": self.name, "error": repr(exc)}})
            except Exception:
                log.exception("heartbeat crashed")
            self._exit.wait(interval)

    def _touch(self, job: _Job) -> None:
        """Reset the idle time of our pending entry so no other worker reclaims it."""
        keys = self.keys
        pending = self.heartbeat_redis.xpending_range(
            keys.stream, keys.group, min=job.entry_id, max=job.entry_id, count=1
        )
        # Only re-claim what is still ours: XCLAIM with min-idle 0 would otherwise steal it back.
        if pending and text(pending[0]["consumer"]) == self.name:
            self.heartbeat_redis.xclaim(
                keys.stream, keys.group, self.name, min_idle_time=0, message_ids=[job.entry_id], justid=True
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m render_service.worker``: load the model, then take jobs until SIGTERM."""
    settings = RenderSettings()
    configure_logging(settings)
    if not settings.model:
        log.error("OMOST_RENDER_MODEL is not set: give a hub id, a diffusers folder or a .safetensors file")
        return 2
    # Requests to stop during the (slow) model load are honoured once the loop starts.
    stopper: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopper.append(True))
    try:
        engine = RenderEngine.load(
            settings.model, device=settings.device, dtype=settings.dtype, cpu_offload=settings.cpu_offload,
            vae=settings.vae, compile=settings.compile,
        )  # fmt: skip
    except ModelNotFoundError as exc:
        log.error("cannot load the model", extra={"fields": {"model": settings.model, "error": str(exc)}})
        return 1
    if settings.compile:
        from render_service.engine.engine import parse_sizes

        # Compile before claiming jobs (and before this worker counts as ready), not on a user's job.
        seconds = engine.warm_up(parse_sizes(settings.warm_up_sizes))
        log.info("compiled and warmed up", extra={"fields": {"seconds": round(seconds, 1)}})
    worker = Worker(settings, engine)
    worker.install_signal_handlers()
    if stopper:
        worker.request_stop()
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
