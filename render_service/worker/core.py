"""The render worker: one process, one device, one job (or one batch of jobs) at a time from the Redis stream.

The loop is *take -> render -> settle*, one module each: :mod:`~render_service.worker.intake`
(reading, reclaiming, batch filling, the claim), :mod:`~render_service.worker.rendering` (one engine
call per batch, with each job's progress and cancel checks) and :mod:`~render_service.worker.settlement`
(PNGs, the image store, the record, on a thread of their own); :mod:`~render_service.worker.webhook_sender`
delivers webhooks, at least once, on another. Every state change is a
transition of :mod:`shared.queue`. With ``batch_max_images`` above 1, *take* goes on reading while the next
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
  new owner's work. With the S3 image store (:mod:`shared.queue.s3`) every PNG is uploaded
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
import logging
import os
import secrets
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

import torch
from redis.backoff import NoBackoff
from redis.retry import Retry

from render_service.engine import ModelNotFoundError
from render_service.engine.backends import AttentionConfigError
from render_service.engine.serving import Engine, load_engine, model_info
from render_service.settings import RenderSettings, configure_logging
from render_service.worker.heartbeat import Heartbeat
from render_service.worker.intake import Intake
from render_service.worker.rendering import Renderer, RenderOutcome, RunningJob
from render_service.worker.retry import REDIS_ERRORS, RetryPolicy, Stopping
from render_service.worker.settlement import Settlement
from render_service.worker.webhook_sender import WebhookSender
from shared.jobs import DEFAULT_MODEL
from shared.queue import SyncRenderQueue
from shared.queue.connect import image_stores, sync_client

log = logging.getLogger("render_service.worker")


class Worker:
    def __init__(self, settings: RenderSettings, engine: Engine) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.engine = engine
        self.name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        url = settings.redis_url
        # The main client blocks in XREADGROUP, so its socket timeout must outlast the block time.
        self.redis = sync_client(url, socket_timeout=settings.block_seconds + 10)
        durability = settings.durability
        # WAIT must follow a transition on the connection that wrote it: a client of one connection.
        writer = sync_client(url, socket_timeout=30, max_connections=1) if durability.replicas else None
        self.queue = SyncRenderQueue(self.redis, self.keys, durability=durability, writer=writer)
        # Per-step progress/cancel checks and heartbeats use short timeouts and no client-side
        # retries: during an outage they fail fast instead of stalling the render.
        fast = {"socket_timeout": 2, "socket_connect_timeout": 2, "retry": Retry(NoBackoff(), 0)}
        self.step_redis = sync_client(url, **fast)
        self.current: list[RunningJob] = []
        """The jobs being rendered now (one unless batching)."""
        self._stop_requested_at: float | None = None
        self.retry = RetryPolicy(
            self.name,
            settings.redis_retry_seconds,
            give_up=lambda: self.stopping and not self.current and not self.settlement.in_progress,
        )
        images, _ = image_stores(settings, self.keys)
        self.settlement = Settlement(settings, self.name, self.queue, self.step_redis, images, self.retry)
        self.intake = Intake(
            settings,
            self.name,
            self.queue,
            self.retry,
            stopping=lambda: self.stopping,
            on_claimed=self._publish_claim,
        )
        self.renderer = Renderer(settings, engine, self.queue, self.step_redis, grace_expired=self._grace_expired)
        sender_redis = sync_client(url, socket_timeout=10, socket_connect_timeout=2)  # outlasts its 1 s reads
        self.webhooks = WebhookSender(settings, self.name, sender_redis)
        self.heartbeat = Heartbeat(
            sync_client(url, **fast),
            self.keys,
            self.name,
            interval=settings.heartbeat_interval,
            claim_idle_seconds=settings.claim_idle_seconds,
            info={"model": engine.model_name, "device": engine.device},
            holding=self._holding,
            on_beat=self.settlement.sweep_soon if settings.image_store != "redis" else None,
            model=model_info(engine, settings.model_name or DEFAULT_MODEL),
            model_ttl_seconds=settings.model_ttl_seconds,
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
        fields = {
            "worker": self.name, "model": self.engine.model_name, "device": self.engine.device,
            "serves": self.settings.model_name or DEFAULT_MODEL, "stream": self.keys.stream,
        }  # fmt: skip
        log.info("worker starting", extra={"fields": fields})
        intake, settlement = self.intake, self.settlement
        try:
            self.retry(intake.ensure_group, "create consumer group", forever=True)
            self.heartbeat.start()
            self.webhooks.start()
            while not self.stopping:
                entry, intake.held = intake.held, None
                if entry is None:
                    entry = self.retry(intake.take, "read the job stream", forever=True)
                if entry is None:
                    continue
                running = intake.claim(*entry)
                if running is None:
                    continue
                batch = self.current = [running]
                try:
                    self._publish_claim()
                    intake.fill(batch)
                    outcomes = self.renderer.render(batch)
                    settlement.wait_for_previous()  # the previous batch, settled while this one rendered
                    settlement.hand_over(batch, outcomes)  # heartbeats go on for it until it is settled
                finally:
                    self.current = []
            settlement.wait_for_previous()
            # Only on a clean stop: when Redis is down (Stopping) the held entry stays pending and
            # is reclaimed by another worker after the claim deadline.
            self._give_back_held()
        except Stopping:
            pass
        finally:
            try:
                settlement.wait_for_previous()
            except Exception:
                log.exception("settling the last batch failed", extra={"fields": {"worker": self.name}})
            settlement.stop_settling()
            self.heartbeat.stop()
            self.webhooks.stop()
            settlement.close()
            log.info("worker stopped", extra={"fields": {"worker": self.name}})

    def _publish_claim(self) -> None:
        # On failure the heartbeat thread tries again within one interval.
        with contextlib.suppress(*REDIS_ERRORS):
            self.heartbeat.publish()

    def _holding(self) -> list[tuple[str, str]]:
        """(job id, entry id) of every stream entry this worker must keep alive: the jobs it renders and
        settles, and the entry it holds for next."""
        held = [(r.delivery.job_id, r.delivery.entry_id) for r in [*self.settlement.in_progress, *self.current]]
        next_job = self.intake.held_job()
        if next_job is not None:
            held.append(next_job)
        return held

    def _give_back_held(self) -> None:
        """On shutdown, a held entry goes back to the queue at once (claimed, then requeued like a job
        stopped mid-render) rather than waiting in this worker's pending list to be reclaimed."""
        entry, self.intake.held = self.intake.held, None
        if entry is None:
            return
        running = self.intake.claim(*entry)
        if running is not None:
            self.settlement.settle(running, RenderOutcome(None))


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
        engine = load_engine(
            settings.model, device=settings.device, dtype=settings.dtype, cpu_offload=settings.cpu_offload,
            config=settings.config, vae=settings.vae, compile=settings.compile, attention=settings.attention,
        )  # fmt: skip
    except ModelNotFoundError as exc:
        log.error("cannot load the model", extra={"fields": {"model": settings.model, "error": str(exc)}})
        return 1
    except AttentionConfigError as exc:  # checked before the model loads: OMOST_RENDER_ATTENTION does not fit
        problem = {"attention": settings.attention, "error": str(exc)}
        log.error("the attention backend cannot run here", extra={"fields": problem})
        return 2
    except ValueError as exc:  # a setting that does not fit the model's family (OMOST_RENDER_VAE on Flux)
        log.error("cannot load the model", extra={"fields": {"model": settings.model, "error": str(exc)}})
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
