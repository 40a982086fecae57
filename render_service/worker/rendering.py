"""Running a render: one engine call for a batch of claimed jobs, with each job's progress writes and its
cancel check (user, shutdown, time limit, superseded), and how each render ended."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from PIL import Image

from render_service.engine import RenderCanceled, RenderResult
from render_service.engine.batching import RenderTask
from render_service.engine.serving import Engine
from render_service.metrics import count_busy, observe_phases, send_counts
from render_service.settings import RenderSettings
from render_service.worker.retry import REDIS_ERRORS
from render_service.worker.step_gate import StepGate
from shared.jobs import JobStatus
from shared.queue import Delivery, SyncRenderQueue, progress, result_fields

log = logging.getLogger("render_service.worker")

CANCEL_POLL_SECONDS = 0.1
"""How often a rendering job asks Redis whether it was canceled or superseded. The engine asks before
every step and every UNet block (about 8 times a step): a round trip each, per job of a batch, would
cost several percent of a GPU step with Redis on another host."""


@dataclass
class RunningJob:
    """The job this worker is rendering now, and why it was asked to stop (if it was)."""

    delivery: Delivery
    cancel_reason: str | None = None


@dataclass
class RenderOutcome:
    """How a render ended, for :meth:`~render_service.worker.settlement.Settlement.settle`."""

    status: JobStatus | None  # None: give the job back (shutdown) or drop it (superseded)
    fields: dict[str, str] = field(default_factory=dict)
    images: list[Image.Image] = field(default_factory=list)
    """What the engine rendered, until the settlement encodes it into ``pngs``."""
    pngs: list[bytes] = field(default_factory=list)
    render_seconds: float | None = None
    error: str | None = None
    message: str | None = None


class Renderer:
    """Renders claimed jobs on the worker's thread; the settlement thread writes what came of them."""

    def __init__(
        self,
        settings: RenderSettings,
        engine: Engine,
        queue: SyncRenderQueue,
        step_redis: redis.Redis,
        *,
        grace_expired: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.engine = engine
        self.queue = queue
        self.step_redis = step_redis
        """The client with short timeouts and no retries: a check during an outage fails fast."""
        self.grace_expired = grace_expired
        """Whether a stopping worker's grace period is over (its jobs are then requeued)."""
        self.step_gate = StepGate(settings.test_step_gate)

    def render(self, batch: list[RunningJob]) -> list[RenderOutcome]:
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
                return [outcome for running in batch for outcome in self.render([running])]
        render_seconds = time.monotonic() - started
        timings = next((r.timings for r in results if isinstance(r, RenderResult)), {})

        def busy(pipe: Any) -> None:
            count_busy(pipe, self.keys, render_seconds)
            observe_phases(pipe, self.keys, timings)  # the batch's phases, once per batch

        send_counts(self.step_redis, busy)
        return [self._outcome(r, result, started, render_seconds) for r, result in zip(batch, results, strict=True)]

    def _task(self, running: RunningJob, started: float) -> RenderTask:
        """The job's request with its progress writes and its cancel check (user, shutdown, time limit, superseded)."""
        keys, delivery = self.keys, running.delivery
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
            if stepped and self.step_gate.folder is not None:  # tests only: held between two steps while told
                self.step_gate.wait(delivery.job_id, until=must_stop)
                return running.cancel_reason is not None
            return False

        def must_stop() -> bool:
            nonlocal last_poll
            if self.grace_expired():
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
                reason = self.queue.stop_reason(delivery.job_id, delivery.token, self.step_redis)
            except REDIS_ERRORS:
                return False  # can't tell during an outage; keep rendering and ask again next step
            if reason == "canceled":
                running.cancel_reason = "user"
                return True
            if reason == "superseded":
                # Another worker reclaimed the job (we were cut off past the deadline): its run
                # wins, so stop spending the device on ours.
                running.cancel_reason = "superseded"
                return True
            return False

        return RenderTask(delivery.message.request, on_step=on_step, should_cancel=should_cancel)

    def _outcome(
        self, running: RunningJob, result: RenderResult | Exception, started: float, render_seconds: float
    ) -> RenderOutcome:
        delivery = running.delivery
        if isinstance(result, RenderCanceled):
            if running.cancel_reason == "user":
                return RenderOutcome("canceled", message="canceled while running")
            if running.cancel_reason == "time limit":
                error = (
                    f"stopped after {time.monotonic() - started:.1f} s: over the per-job time limit of "
                    f"{self.settings.max_job_seconds} s"
                )
                return RenderOutcome("failed", error=error)
            return RenderOutcome(None)
        if isinstance(result, Exception):
            # Any engine failure fails this job (it would fail again), not the worker.
            log.error("render failed", exc_info=result, extra={"fields": {"job": delivery.job_id}})
            return RenderOutcome("failed", error=f"render failed: {type(result).__name__}: {result}"[:2000])
        timings = {**{k: float(v) for k, v in result.timings.items()}, "worker_total": render_seconds}
        fields = result_fields(
            seeds=[int(s) for s in result.seeds],
            timings=timings,
            model=self.engine.model_name,
            device=self.engine.device,
            num_images=len(result.images),
        )
        return RenderOutcome("succeeded", fields=fields, images=result.images, render_seconds=render_seconds)
