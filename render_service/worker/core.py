"""The render worker: one process, one device, one job (or one batch of jobs) at a time from the Redis stream.

The loop is *take -> render -> settle*; every state change is a transition of
:mod:`shared.queue`. With ``batch_max_images`` above 1, *take* goes on reading while the next
queued jobs can share the first one's UNet batch (:func:`~render_service.engine.batching.batch_key`,
sides within ``batch_max_pixels``); each job of a batch is still claimed, beaten for, canceled and
settled on its own. Guarantees, and how they are kept:

* **A job is rendered by one live worker.** ``XREADGROUP`` hands each entry to one consumer. While
  rendering, the :class:`~render_service.worker.heartbeat.Heartbeat` resets the entry's idle time
  and publishes which entry it is beating for and its own claim deadline; a worker looking for
  abandoned jobs skips entries whose owner still beats, whatever its own deadline setting.
* **A dead worker's job is finished by another.** Idle workers reclaim entries idle past
  ``claim_idle_seconds`` whose owner stopped beating; :func:`shared.queue.claim` fails the job
  (and dead-letters it) after ``max_deliveries``, so a job that kills workers cannot loop forever.
* **Results are durable before the ack.** PNGs are written first, then :func:`shared.queue.finish`
  marks the record terminal and acks in one transaction fenced by the record's ``owner`` token: a
  worker that was cut off long enough for its job to be reclaimed does not overwrite or ack the
  new owner's work. With the S3 image store (:mod:`render_service.images`) every PNG is uploaded
  under the delivery's own keys while the heartbeat still holds the job, and the keys enter the
  record in that same ``finish`` transaction: a run killed mid-upload leaves the job reclaimable,
  and the record never names half a set. An upload that keeps failing fails the job, saying why.
* **Rendering and settling overlap.** A rendered batch is handed to one settle thread (PNGs,
  upload, record) while the next batch renders; the render thread waits for that settlement before
  handing over another, so at most one batch is in each stage, and a job is heartbeated until it is
  settled. A stopping worker settles what it rendered before it leaves.
* **Redis outages are waited out** (:class:`~render_service.worker.retry.RetryPolicy`); per-step
  progress is best effort and never stalls rendering.
* **SIGTERM** stops taking jobs; the current one is finished if it ends within
  ``shutdown_grace_seconds``, otherwise canceled and requeued for another worker.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any

import redis
import torch
from PIL import Image
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry

from render_service.engine import ModelNotFoundError, RenderCanceled, RenderEngine, RenderResult
from render_service.engine.backends import AttentionConfigError
from render_service.engine.batching import RenderTask, batch_key
from render_service.images import S3Images, describe, image_keys, is_transient, register, sweep
from render_service.metrics import count_busy, count_image_store_error, count_webhook, observe_phases
from render_service.settings import RenderSettings, configure_logging
from render_service.webhooks import deliver
from render_service.worker.heartbeat import Heartbeat, owner_is_alive
from render_service.worker.retry import REDIS_ERRORS, RetryPolicy, Stopping
from render_service.worker.step_gate import StepGate
from shared.jobs import JobStatus, RenderRequest
from shared.queue import (
    Delivery,
    Rec,
    claim,
    dead_letter,
    decode_hash,
    decode_message,
    fail,
    finish,
    progress,
    read_entries,
    record_to_job,
    requeue,
    store_images,
    stream_entries,
    text,
    transact,
)

log = logging.getLogger("render_service.worker")

CANCEL_POLL_SECONDS = 0.1
"""How often a rendering job asks Redis whether it was canceled or superseded. The engine asks before
every step and every UNet block (about 8 times a step): a round trip each, per job of a batch, would
cost several percent of a GPU step with Redis on another host."""


@dataclass
class _Running:
    """The job this worker is rendering now, and why it was asked to stop (if it was)."""

    delivery: Delivery
    cancel_reason: str | None = None


@dataclass
class _Outcome:
    """How a render ended, for :meth:`Worker._settle`."""

    status: JobStatus | None  # None: give the job back (shutdown) or drop it (superseded)
    fields: dict[str, str] = field(default_factory=dict)
    images: list[Image.Image] = field(default_factory=list)
    """What the engine rendered, until :meth:`Worker._encoded` turns it into ``pngs``."""
    pngs: list[bytes] = field(default_factory=list)
    render_seconds: float | None = None
    error: str | None = None
    message: str | None = None


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
        self.current: list[_Running] = []
        """The jobs being rendered now (one unless batching)."""
        self._settling: list[_Running] = []
        """The previous batch, being encoded, stored and settled while the current one renders."""
        self._settler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="settle")
        self._settled: Future[None] | None = None
        self._held: tuple[str, Mapping[Any, Any]] | None = None
        """An entry read while filling a batch that could not join it: this worker's next job."""
        self._stop_requested_at: float | None = None
        self._webhooks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="webhook")
        self.images = S3Images(settings) if settings.image_store == "s3" else None
        # Sweeps talk to the image store, which may be slow or down: never on the heartbeat's thread.
        self._sweeper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-sweep")
        self._sweeping: Future[None] | None = None
        self.step_gate = StepGate(settings.test_step_gate)
        self.retry = RetryPolicy(
            self.name,
            settings.redis_retry_seconds,
            give_up=lambda: self.stopping and not self.current and not self._settling,
        )
        self.heartbeat = Heartbeat(
            redis.Redis.from_url(url, **fast),
            self.keys,
            self.name,
            interval=settings.heartbeat_interval,
            claim_idle_seconds=settings.claim_idle_seconds,
            info={"model": engine.model_name, "device": engine.device},
            holding=self._holding,
            on_webhook=self._schedule_webhook,
            on_beat=self._sweep_soon if self.images is not None else None,
        )

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
        """Take -> render -> settle, one job (or batch) at a time, until asked to stop."""
        fields = {"worker": self.name, "model": self.engine.model_name, "device": self.engine.device}
        log.info("worker starting", extra={"fields": fields})
        try:
            self.retry(self._ensure_group, "create consumer group", forever=True)
            self.heartbeat.start()
            while not self.stopping:
                entry, self._held = self._held, None
                if entry is None:
                    entry = self.retry(self._take, "read the job stream", forever=True)
                if entry is None:
                    continue
                running = self._claim(*entry)
                if running is None:
                    continue
                batch = self.current = [running]
                try:
                    self._publish_claim()
                    self._fill(batch)
                    outcomes = self._render(batch)
                    self._wait_settled()  # the previous batch, settled while this one rendered
                    self._settling = batch  # heartbeats go on for it until it is settled
                finally:
                    self.current = []
                self._settled = self._settler.submit(self._finish, batch, outcomes)
            self._wait_settled()
            # Only on a clean stop: when Redis is down (Stopping) the held entry stays pending and
            # is reclaimed by another worker after the claim deadline.
            self._give_back_held()
        except Stopping:
            pass
        finally:
            try:
                self._wait_settled()
            except Exception:
                log.exception("settling the last batch failed", extra={"fields": {"worker": self.name}})
            self._settler.shutdown(wait=True)
            self.heartbeat.stop()
            self._sweeper.shutdown(wait=False, cancel_futures=True)
            self._webhooks.shutdown(wait=True)
            log.info("worker stopped", extra={"fields": {"worker": self.name}})

    def _ensure_group(self) -> None:
        try:
            # id 0: a fresh group also delivers entries enqueued before any worker existed.
            self.redis.xgroup_create(self.keys.stream, self.keys.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _publish_claim(self) -> None:
        # On failure the heartbeat thread tries again within one interval.
        with contextlib.suppress(*REDIS_ERRORS):
            self.heartbeat.publish()

    def _holding(self) -> list[tuple[str, str]]:
        """(job id, entry id) of every stream entry this worker must keep alive: the jobs it renders and
        the entry it holds for next (its job may be unknown: a malformed message is dead-lettered later)."""
        held = [(r.delivery.job_id, r.delivery.entry_id) for r in [*self._settling, *self.current]]
        entry = self._held
        if entry is not None:
            try:
                job_id = decode_message(entry[1]).job_id
            except ValueError:
                job_id = ""
            held.append((job_id, entry[0]))
        return held

    # --- take ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _group_may_vanish(self) -> Iterator[None]:
        """A Redis without persistence that restarted has no stream: recreate it, and read again later."""
        try:
            yield
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._ensure_group()

    def _take(self) -> tuple[str, Mapping[Any, Any]] | None:
        """The next stream entry for this worker: an abandoned one first (it is older), else a new one."""
        with self._group_may_vanish():
            reclaimed = self._reclaim()
            if reclaimed is not None or self.stopping:
                return reclaimed
            return self._read_new(block_seconds=self.settings.block_seconds)
        return None

    def _read_new(self, block_seconds: float | None) -> tuple[str, Mapping[Any, Any]] | None:
        """The next never-delivered entry; waits up to ``block_seconds`` for one (None: answers at once)."""
        keys = self.keys
        block = None if block_seconds is None else int(block_seconds * 1000)
        with self._group_may_vanish():
            answer = self.redis.xreadgroup(keys.group, self.name, {keys.stream: ">"}, count=1, block=block)
            for entry_id, fields in read_entries(answer):
                return entry_id, fields
        return None

    def _fill(self, batch: list[_Running]) -> None:
        """Claim the next queued jobs while they can join the first one's UNet batch.

        Only jobs already waiting join (no wait for more), in stream order: the first entry that
        cannot join is held as this worker's next job, so no job is overtaken by a later one.
        """
        limit, first = self.settings.batch_max_images, batch[0].delivery.message.request
        if limit <= 1 or first.width * first.height > self.settings.batch_max_pixels:
            return
        key, images = batch_key(first), first.num_images
        while images < limit and not self.stopping:
            try:
                entry = self._read_new(block_seconds=None)
            except REDIS_ERRORS:
                return  # an outage: render what is claimed; the stream is read again after it
            if entry is None:
                return
            request: RenderRequest | None
            try:
                request = decode_message(entry[1]).request
            except ValueError:
                request = None  # _claim dead-letters it when its turn comes
            if request is None or batch_key(request) != key or images + request.num_images > limit:
                self._held = entry
                return
            running = self._claim(*entry)
            if running is not None:
                batch.append(running)
                images += request.num_images
                self._publish_claim()

    def _give_back_held(self) -> None:
        """On shutdown, a held entry goes back to the queue at once (claimed, then requeued like a job
        stopped mid-render) rather than waiting in this worker's pending list to be reclaimed."""
        entry, self._held = self._held, None
        if entry is None:
            return
        running = self._claim(*entry)
        if running is not None:
            self._settle(running, _Outcome(None))

    def _reclaim(self) -> tuple[str, Mapping[Any, Any]] | None:
        """XCLAIM a pending entry idle past our deadline whose owner no longer beats for it."""
        keys = self.keys
        min_idle = int(self.settings.claim_idle_seconds * 1000)
        for pending in self.redis.xpending_range(keys.stream, keys.group, min="-", max="+", count=100, idle=min_idle):
            entry_id, consumer = text(pending["message_id"]), text(pending["consumer"])
            if owner_is_alive(self.redis, keys, consumer, entry_id):
                continue  # its owner beats slower than our deadline, but it beats: not abandoned
            claimed = self.redis.xclaim(
                keys.stream, keys.group, self.name, min_idle_time=min_idle, message_ids=[entry_id]
            )
            for claimed_id, fields in stream_entries(claimed):
                if fields:
                    log.info("reclaimed an abandoned job", extra={"fields": {"worker": self.name, "entry": entry_id}})
                    return claimed_id, fields
            # Deleted from the stream meanwhile (Redis 6.2 answers nil fields): nothing to run.
            self.redis.xack(keys.stream, keys.group, entry_id)
        return None

    def _claim(self, entry_id: str, fields: Mapping[Any, Any]) -> _Running | None:
        """Apply :func:`shared.queue.claim`; None when there is nothing to render."""
        keys = self.keys
        try:
            message = decode_message(fields)
        except ValueError as exc:
            reason = f"malformed message: {exc}"
            log.error("malformed queue message", extra={"fields": {"entry": entry_id, "error": str(exc)}})

            def write() -> None:
                with self.redis.pipeline(transaction=True) as pipe:
                    dead_letter(pipe, keys, entry_id, fields, reason)
                    pipe.execute()

            self.retry(write, "dead-letter")
            return None
        token = f"{self.name}/{secrets.token_hex(4)}"

        def build(pipe: Any, record: dict[str, str]) -> Any:
            return claim(
                pipe,
                keys,
                record,
                entry_id=entry_id,
                message=message,
                worker=self.name,
                token=token,
                max_deliveries=self.settings.max_deliveries,
            )

        decision = self.retry(lambda: transact(self.redis, keys, message.job_id, build), "start job")
        if decision.settled is not None:
            fields = {"job": message.job_id, "status": decision.settled}
            log.info("job settled without rendering", extra={"fields": fields})
            if decision.notify:
                self._schedule_webhook(message.job_id)
            return None
        log.info("job started", extra={"fields": {"job": message.job_id, "deliveries": decision.deliveries}})
        return _Running(Delivery(entry_id, message, token, decision.deliveries))

    # --- render --------------------------------------------------------------------------------

    def _render(self, batch: list[_Running]) -> list[_Outcome]:
        """Render the batch in one engine call; each job's outcome, in order.

        A batch of several that fails as a whole (out of memory, say) is rendered again job by job,
        so a job is failed only by its own render.
        """
        started = time.monotonic()
        tasks = [self._task(running, started) for running in batch]
        try:
            results: list[RenderResult | Exception] = self.engine.render_batch(tasks)
        except Exception as exc:
            if len(batch) == 1:
                results = [exc]
            else:
                log.exception(
                    "batch render failed; rendering its jobs one by one", extra={"fields": {"jobs": len(batch)}}
                )
                return [outcome for running in batch for outcome in self._render([running])]
        render_seconds = time.monotonic() - started
        timings = next((r.timings for r in results if isinstance(r, RenderResult)), {})

        def busy(pipe: Any) -> None:
            count_busy(pipe, self.keys, render_seconds)
            observe_phases(pipe, self.keys, timings)  # the batch's phases, once per batch

        self._count(busy)
        return [self._outcome(r, result, started, render_seconds) for r, result in zip(batch, results, strict=True)]

    def _task(self, running: _Running, started: float) -> RenderTask:
        """The job's request with its progress writes and its cancel check (user, shutdown, time limit, superseded)."""
        keys, delivery = self.keys, running.delivery
        job_key = keys.job(delivery.job_id)
        last_step = started
        stepped = False

        def on_step(done: int, total: int) -> None:
            nonlocal last_step, stepped
            stepped = True
            now = time.monotonic()
            seconds, last_step = now - last_step, now
            try:
                with self.step_redis.pipeline(transaction=False) as pipe:
                    ttl = delivery.message.ttl_seconds
                    progress(pipe, keys, delivery.job_id, ttl, done=done, total=total, step_seconds=seconds)
                    pipe.execute()
            except REDIS_ERRORS:
                pass  # progress is best effort; only the final result must get through

        limit = self.settings.max_job_seconds

        last_poll = -CANCEL_POLL_SECONDS

        def should_cancel() -> bool:
            if must_stop():
                return True
            if stepped:  # tests only: held between two steps while the test says so
                self.step_gate.wait(delivery.job_id, until=must_stop)
                return running.cancel_reason is not None
            return False

        def must_stop() -> bool:
            nonlocal last_poll
            if self._grace_expired():
                running.cancel_reason = "shutdown"
                return True
            now = time.monotonic()
            if limit is not None and now - started > limit:
                running.cancel_reason = "time limit"
                return True
            if now - last_poll < CANCEL_POLL_SECONDS:
                return False
            last_poll = now
            try:
                flag, owner = self.step_redis.hmget(job_key, [Rec.CANCEL_REQUESTED, Rec.OWNER])
            except REDIS_ERRORS:
                return False  # can't tell during an outage; keep rendering and ask again next step
            if flag is not None and text(flag) == "1":
                running.cancel_reason = "user"
                return True
            if owner is not None and text(owner) != delivery.token:
                # Another worker reclaimed the job (we were cut off past the deadline): its run
                # wins, so stop spending the device on ours.
                running.cancel_reason = "superseded"
                return True
            return False

        return RenderTask(delivery.message.request, on_step=on_step, should_cancel=should_cancel)

    def _outcome(
        self, running: _Running, result: RenderResult | Exception, started: float, render_seconds: float
    ) -> _Outcome:
        delivery = running.delivery
        if isinstance(result, RenderCanceled):
            if running.cancel_reason == "user":
                return _Outcome("canceled", message="canceled while running")
            if running.cancel_reason == "time limit":
                error = (
                    f"stopped after {time.monotonic() - started:.1f} s: over the per-job time limit of "
                    f"{self.settings.max_job_seconds} s"
                )
                return _Outcome("failed", error=error)
            return _Outcome(None)
        if isinstance(result, Exception):
            # Any engine failure fails this job (it would fail again), not the worker.
            log.error("render failed", exc_info=result, extra={"fields": {"job": delivery.job_id}})
            return _Outcome("failed", error=f"render failed: {type(result).__name__}: {result}"[:2000])
        timings = {**{k: float(v) for k, v in result.timings.items()}, "worker_total": render_seconds}
        fields = {
            Rec.SEEDS: json.dumps([int(s) for s in result.seeds]),
            Rec.TIMINGS: json.dumps(timings),
            Rec.MODEL: self.engine.model_name,
            Rec.DEVICE: self.engine.device,
            Rec.NUM_IMAGES: str(len(result.images)),
        }
        return _Outcome("succeeded", fields=fields, images=result.images, render_seconds=render_seconds)

    # --- settle in the background ---------------------------------------------------------------

    def _finish(self, batch: list[_Running], outcomes: list[_Outcome]) -> None:
        """PNGs, upload, settle: on the settle thread, while the worker renders its next batch.

        PNG encoding of a 1024² image takes 0.1-0.3 s of CPU (zlib, outside the GIL): on the render
        thread it would add that to every GPU job. One batch settles at a time (the render thread
        waits for it before handing over the next), and its jobs stay heartbeated until settled.
        """
        try:
            for running, outcome in zip(batch, outcomes, strict=True):
                started, images = time.monotonic(), bool(outcome.images)
                outcome = self._encoded(outcome)
                encoded = time.monotonic()
                if outcome.pngs and self.images is not None:
                    outcome = self._upload(running, outcome)
                self._settle(running, outcome)
                phases = {"png": encoded - started, "settle": time.monotonic() - encoded}
                if not images:
                    del phases["png"]  # nothing was encoded (failed, canceled, given back)
                self._count(functools.partial(observe_phases, keys=self.keys, seconds=phases))
        finally:
            self._settling = []

    def _wait_settled(self) -> None:
        """Wait for the batch on the settle thread; what it raised is raised here, on the worker's thread."""
        settled, self._settled = self._settled, None
        if settled is not None:
            settled.result()

    @staticmethod
    def _encoded(outcome: _Outcome) -> _Outcome:
        pngs = []
        for image in outcome.images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return replace(outcome, images=[], pngs=pngs)

    # --- upload (S3 image store) ----------------------------------------------------------------

    def _upload(self, running: _Running, outcome: _Outcome) -> _Outcome:
        """Upload every PNG under this delivery's keys; the outcome then carries the keys, not the bytes."""
        store, delivery = self.images, running.delivery
        assert store is not None
        names = [store.key(delivery.job_id, delivery.token, n) for n in range(len(outcome.pngs))]
        ttl = delivery.message.ttl_seconds

        def enter() -> None:
            # Before the first byte goes up: should this run die midway, the sweep still finds its objects.
            with self.redis.pipeline(transaction=False) as pipe:
                register(pipe, self.keys, names, time.time() + ttl)
                pipe.execute()

        self.retry(enter, "register images")
        log.info("uploading images", extra={"fields": {"job": delivery.job_id, "objects": len(names)}})
        for index, (name, png) in enumerate(zip(names, outcome.pngs, strict=True)):
            try:
                self.retry(
                    lambda name=name, png=png: store.put(name, png),  # type: ignore[misc]
                    "upload image",
                    transient=is_transient,
                    seconds=self.settings.s3_upload_retry_seconds,
                )
            except Exception as exc:
                error = (
                    f"could not store image {index + 1} of {len(names)} in s3://{store.bucket}/{name}: {describe(exc)}"
                )
                log.error("image upload failed", extra={"fields": {"job": delivery.job_id, "error": error}})
                self._count(lambda pipe: count_image_store_error(pipe, self.keys, "upload"))
                return _Outcome("failed", error=error[:2000])
        return replace(outcome, pngs=[], fields={**outcome.fields, Rec.IMAGE_KEYS: json.dumps(names)})

    def _sweep_soon(self) -> None:
        """Called each heartbeat: start a sweep of expired images unless one is still running."""
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = self._sweeper.submit(self._sweep)

    def _sweep(self) -> None:
        assert self.images is not None
        try:
            sweep(self.step_redis, self.keys, self.images)
        except Exception as exc:
            # The keys stay in the set: the next beat (or another worker) tries again.
            log.warning("image sweep failed", extra={"fields": {"worker": self.name, "error": describe(exc)}})
            self._count(lambda pipe: count_image_store_error(pipe, self.keys, "sweep"))

    # --- settle --------------------------------------------------------------------------------

    def _settle(self, running: _Running, outcome: _Outcome) -> None:
        """Write how the render ended with the matching transition, fenced by the delivery's token."""
        keys, delivery = self.keys, running.delivery
        job = {"fields": {"job": delivery.job_id}}
        if running.cancel_reason == "superseded":
            log.warning("job was reclaimed by another worker; stopped rendering it", extra=job)
            return
        if outcome.pngs:
            # Images go first and outside the transaction: once the record says "succeeded",
            # every image it counts is already readable.
            def write_images() -> None:
                with self.redis.pipeline(transaction=False) as pipe:
                    store_images(pipe, keys, delivery.job_id, outcome.pngs, delivery.message.ttl_seconds)
                    pipe.execute()

            self.retry(write_images, "store images")

        def build(pipe: Any, record: dict[str, str]) -> bool:
            if outcome.status is None:
                return requeue(pipe, keys, record, delivery, worker=self.name)
            if outcome.status == "failed":
                return fail(pipe, keys, record, delivery, outcome.error or "failed", worker=self.name)
            done = finish(
                pipe,
                keys,
                record,
                delivery,
                outcome.status,
                worker=self.name,
                fields=outcome.fields,
                render_seconds=outcome.render_seconds,
                message=outcome.message,
            )
            names = image_keys(outcome.fields)
            if done and names:
                # The record's TTL restarts now; the objects live exactly as long.
                register(pipe, keys, names, time.time() + delivery.message.ttl_seconds)
            return done

        if not self.retry(lambda: transact(self.redis, keys, delivery.job_id, build), "settle job"):
            # Reclaimed by another worker while we were cut off: its run wins, and the entry is
            # now in its pending list, so we must not ack it either.
            log.warning("job was reclaimed by another worker; dropping our result", extra=job)
            return
        if outcome.status is None:
            log.info("job requeued on shutdown", extra=job)
            return
        fields = {"job": delivery.job_id, "status": outcome.status, "error": outcome.error}
        log.info("job finished", extra={"fields": fields})
        self._schedule_webhook(delivery.job_id)

    # --- metrics -------------------------------------------------------------------------------

    def _count(self, write: Callable[[Any], object]) -> None:
        """Send what ``write`` buffers into the metrics hash, best effort: a lost count never fails a job."""
        try:
            with self.step_redis.pipeline(transaction=False) as pipe:
                write(pipe)
                pipe.execute()
        except REDIS_ERRORS:
            pass

    # --- webhooks ------------------------------------------------------------------------------

    def _schedule_webhook(self, job_id: str) -> None:
        # Off the render thread: a slow receiver must not hold up the next job.
        self._webhooks.submit(self._send_webhook, job_id)

    def _send_webhook(self, job_id: str) -> None:
        settings = self.settings
        job_key = self.keys.job(job_id)
        try:
            record = decode_hash(self.retry(lambda: self.step_redis.hgetall(job_key), "read job"))
            url = record.get(Rec.WEBHOOK_URL)
            if not url:
                return
            job = record_to_job(record, settings.public_url)
            body = job.model_dump_json(by_alias=True).encode()
            outcome = deliver(
                url,
                body,
                event=f"render.{job.status}",
                allow_private=settings.allow_private_webhooks,
                secret=settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
                max_attempts=settings.webhook_max_attempts,
                timeout=settings.webhook_timeout_seconds,
            )
            self.retry(lambda: self.step_redis.hset(job_key, Rec.WEBHOOK_STATUS, outcome), "record webhook")
            self._count(lambda pipe: count_webhook(pipe, self.keys, outcome))
            log.info("webhook sent", extra={"fields": {"job": job_id, "outcome": outcome}})
        except Exception:
            log.exception("webhook delivery crashed", extra={"fields": {"job": job_id}})


def cpu_threads(setting: int | None, cores: int | None = None) -> int:
    """The torch thread count of a CPU worker: the setting, else half the cores (at least 1).

    Half, like the embedded planner's llama.cpp server, so the two sharing a host do not fight over cores.
    """
    return setting or max(1, (cores or os.cpu_count() or 1) // 2)


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
            vae=settings.vae, compile=settings.compile, attention=settings.attention,
        )  # fmt: skip
    except ModelNotFoundError as exc:
        log.error("cannot load the model", extra={"fields": {"model": settings.model, "error": str(exc)}})
        return 1
    except AttentionConfigError as exc:  # checked before the model loads: OMOST_RENDER_ATTENTION does not fit
        problem = {"attention": settings.attention, "error": str(exc)}
        log.error("the attention backend cannot run here", extra={"fields": problem})
        return 2
    if torch.device(engine.device).type == "cpu":
        torch.set_num_threads(cpu_threads(settings.cpu_threads))
    from render_service.engine.engine import parse_sizes

    # Warm start before claiming jobs (and before this worker counts as ready), not on a user's job:
    # compile the configured sizes, or else one dummy step at a small size (lazy initialisation).
    sizes = parse_sizes(settings.warm_up_sizes) if settings.compile else [(128, 128)]
    seconds = engine.warm_up(sizes, steps=2 if settings.compile else 1)
    fields = {"seconds": round(seconds, 2), "compiled": settings.compile, "attention": engine.attention}
    log.info("warmed up", extra={"fields": fields})
    worker = Worker(settings, engine)
    worker.install_signal_handlers()
    if stopper:
        worker.request_stop()
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
