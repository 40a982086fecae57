"""Settling rendered jobs, on a thread of their own while the next batch renders: PNG encoding, the
image store, the record's terminal (or requeue) transition fenced by the delivery's token (which also
queues the job's webhook delivery, :mod:`~render_service.worker.webhook_sender`); and the image store's
sweep of expired objects."""

from __future__ import annotations

import functools
import io
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import redis

from render_service.metrics import count_image_store_error, observe_phases, send_counts
from render_service.settings import RenderSettings
from render_service.worker.rendering import RenderOutcome, RunningJob
from render_service.worker.retry import RetryPolicy
from shared.queue import Delivery, ImagesNotSaved, ImageStore, SyncRenderQueue, fail, finish, requeue

log = logging.getLogger("render_service.worker")


class Settlement:
    """Writes how each render ended. One batch settles at a time; :attr:`in_progress` is it."""

    def __init__(
        self,
        settings: RenderSettings,
        name: str,
        queue: SyncRenderQueue,
        step_redis: redis.Redis,
        images: ImageStore,
        retry: RetryPolicy,
    ) -> None:
        self.settings = settings
        self.name = name
        self.keys = settings.keys
        self.queue = queue
        self.redis = queue.redis
        self.step_redis = step_redis
        self.images = images
        self.retry = retry
        self.in_progress: list[RunningJob] = []
        """The batch being encoded, stored and settled while the worker renders the next one."""
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="settle")
        self._pending: Future[None] | None = None
        # Sweeps talk to the image store, which may be slow or down: never on the heartbeat's thread.
        self._sweeper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-sweep")
        self._sweeping: Future[None] | None = None

    def stop_settling(self) -> None:
        """After the last :meth:`wait_for_previous`: no more batches."""
        self._thread.shutdown(wait=True)

    def close(self) -> None:
        """Once the heartbeat (which starts sweeps) has stopped."""
        self._sweeper.shutdown(wait=False, cancel_futures=True)

    # --- the settle thread ----------------------------------------------------------------------

    def hand_over(self, batch: list[RunningJob], outcomes: list[RenderOutcome]) -> None:
        """Settle ``batch`` on the settle thread; its jobs count as in progress (heartbeated) until then."""
        self.in_progress = batch
        self._pending = self._thread.submit(self._settle_batch, batch, outcomes)

    def _settle_batch(self, batch: list[RunningJob], outcomes: list[RenderOutcome]) -> None:
        """PNGs, image store, record: on the settle thread, while the worker renders its next batch.

        PNG encoding of a 1024² image takes 0.1-0.3 s of CPU (zlib, outside the GIL): on the render
        thread it would add that to every GPU job. One batch settles at a time (the render thread
        waits for it before handing over the next), and its jobs stay heartbeated until settled.
        """
        try:
            for running, outcome in zip(batch, outcomes, strict=True):
                started, images = time.monotonic(), bool(outcome.images)
                encoded_outcome = self._encoded(outcome)
                encoded = time.monotonic()
                self.settle(running, encoded_outcome)
                phases = {"png": encoded - started, "settle": time.monotonic() - encoded}
                if not images:
                    del phases["png"]  # nothing was encoded (failed, canceled, given back)
                send_counts(self.step_redis, functools.partial(observe_phases, keys=self.keys, seconds=phases))
        finally:
            self.in_progress = []

    def wait_for_previous(self) -> None:
        """Wait for the batch on the settle thread; what it raised is raised here, on the worker's thread."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    @staticmethod
    def _encoded(outcome: RenderOutcome) -> RenderOutcome:
        pngs = []
        for image in outcome.images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return replace(outcome, images=[], pngs=pngs)

    # --- images --------------------------------------------------------------------------------

    def _save_images(self, delivery: Delivery, outcome: RenderOutcome) -> RenderOutcome:
        """Save the PNGs in the image store; the outcome then carries the fields naming them, not the bytes
        (or, if the store keeps failing, is a failure with the reason)."""
        try:
            fields = self.images.save(
                self.redis,
                self.retry,
                job_id=delivery.job_id,
                token=delivery.token,
                pngs=outcome.pngs,
                ttl_seconds=delivery.message.ttl_seconds,
            )
        except ImagesNotSaved as exc:
            send_counts(self.step_redis, lambda pipe: count_image_store_error(pipe, self.keys, "upload"))
            return RenderOutcome("failed", error=str(exc))
        return replace(outcome, pngs=[], fields={**outcome.fields, **fields})

    def sweep_soon(self) -> None:
        """Called each heartbeat: start a sweep of expired images unless one is still running."""
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = self._sweeper.submit(self._sweep)

    def _sweep(self) -> None:
        try:
            self.images.sweep(self.step_redis)
        except Exception as exc:
            # The keys stay in the set: the next beat (or another worker) tries again.
            log.warning("image sweep failed", extra={"fields": {"worker": self.name, "error": repr(exc)}})
            send_counts(self.step_redis, lambda pipe: count_image_store_error(pipe, self.keys, "sweep"))

    # --- settle --------------------------------------------------------------------------------

    def settle(self, running: RunningJob, outcome: RenderOutcome) -> None:
        """Write how the render ended with the matching transition, fenced by the delivery's token."""
        keys, delivery = self.keys, running.delivery
        job = {"fields": {"job": delivery.job_id}}
        if running.cancel_reason == "superseded":
            log.warning("job was reclaimed by another worker; stopped rendering it", extra=job)
            return
        if outcome.pngs:
            # Images go first and outside the transaction: once the record says "succeeded",
            # every image it counts is already readable.
            outcome = self._save_images(delivery, outcome)

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
            if done:
                self.images.on_finish(pipe, outcome.fields, delivery.message.ttl_seconds)
            return done

        if not self.retry(lambda: self.queue.transact(delivery.job_id, build), "settle job"):
            # Reclaimed by another worker while we were cut off: its run wins, and the entry is
            # now in its pending list, so we must not ack it either.
            log.warning("job was reclaimed by another worker; dropping our result", extra=job)
            return
        if outcome.status is None:
            log.info("job requeued on shutdown", extra=job)
            return
        fields = {"job": delivery.job_id, "status": outcome.status, "error": outcome.error}
        log.info("job finished", extra={"fields": fields})
