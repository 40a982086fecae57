"""Liveness, readiness and Prometheus metrics.

Workers record their observations (per-step and per-job seconds, terminal counts) in a Redis hash,
so this one endpoint reports the whole deployment however many workers and API replicas run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import redis.exceptions
from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from render_service.api.deps import SettingsDep, StoreDep
from render_service.api.errors import POOL_EXHAUSTED_MESSAGES
from render_service.metrics import (
    BUSY_SECONDS_KEY,
    IMAGE_STORE_OPERATIONS,
    PHASE_SECONDS_BUCKETS,
    PHASES,
    WEBHOOK_OUTCOMES,
    image_store_error_key,
    phase_key,
    webhook_key,
)
from render_service.store import QueueStats
from shared.jobs import TERMINAL_STATUSES
from shared.queue import QUEUE_WAIT_SECONDS_BUCKETS, RENDER_SECONDS_BUCKETS, STEP_SECONDS_BUCKETS

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (nothing else is checked)."""
    return {"status": "ok"}


_REPORT = {"application/json": {"schema": {"type": "object", "additionalProperties": True}}}


@router.get(
    "/readyz",
    responses={503: {"description": "A dependency is missing; the body says which.", "content": _REPORT}},
)
async def readyz(settings: SettingsDep, store: StoreDep) -> Response:
    """Redis answers and (unless disabled) at least one worker with a loaded model is heartbeating.

    Status only: probes are open to anyone (and cross-origin), so worker names, hosts, pids, model
    paths and job ids are in the admin view (``GET /v1/admin/workers``) and counts in /metrics."""
    checks: dict[str, Any] = {}
    ready = True
    try:
        await store.redis.ping()
        checks["redis"] = "ok"
        workers = await store.live_workers(3 * settings.heartbeat_interval)
        checks["workers"] = len(workers)
        if settings.readyz_requires_worker and not workers:
            ready = False
            checks["problem"] = "no live render worker (none has sent a heartbeat recently)"
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        ready = False
        checks["redis"] = "pool exhausted" if str(exc) in POOL_EXHAUSTED_MESSAGES else "unreachable"
    body = {"status": "ready" if ready else "not ready", **checks}
    return JSONResponse(body, status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE)


class _Snapshot(Collector):
    """Metric families built from one read of Redis, for one scrape (``stats`` None: Redis did not answer)."""

    def __init__(self, stats: QueueStats | None, depth_limit: int | None = None) -> None:
        self.stats = stats
        self.depth_limit = depth_limit

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "omost_render_redis_up", "Whether Redis answered this scrape (1) or not (0).", value=self.stats is not None
        )
        if self.stats is None:
            return
        stats, counters = self.stats, self.stats.counters
        # Per model: each model has its own stream, fleet, scaler and depth limit. A total is a sum over
        # the label (sum without (model)), so no unlabelled "all models" series is mixed in.
        depth = GaugeMetricFamily(
            "omost_render_queue_depth",
            "Jobs on the model's stream (queued or running); OMOST_QUEUE_MAX_DEPTH bounds each model's.",
            labels=["model"],
        )
        jobs = GaugeMetricFamily(
            "omost_render_jobs", "Jobs now queued or running, per model.", labels=["model", "status"]
        )
        for model, queue in sorted(stats.queues.items()):
            depth.add_metric([model], queue.depth)
            jobs.add_metric([model, "queued"], max(0, queue.depth - queue.pending))
            jobs.add_metric([model, "running"], queue.pending)
        yield depth
        if self.depth_limit is not None:
            yield GaugeMetricFamily(
                "omost_render_queue_depth_limit",
                "OMOST_QUEUE_MAX_DEPTH: submits for a model whose stream holds this many jobs get 429.",
                value=self.depth_limit,
            )
        yield jobs
        finished = CounterMetricFamily("omost_render_jobs_finished", "Jobs that ended, by status.", labels=["status"])
        for name in sorted(TERMINAL_STATUSES):
            finished.add_metric([name], counters.get(f"jobs_total:{name}", 0.0))
        yield finished
        yield CounterMetricFamily(
            "omost_render_jobs_submitted", "Jobs queued.", value=counters.get("jobs_submitted_total", 0.0)
        )
        yield GaugeMetricFamily(
            "omost_render_dead_letter_jobs", "Entries on the dead-letter stream.", value=stats.dead_letter
        )
        yield GaugeMetricFamily("omost_render_workers", "Workers with a recent heartbeat.", value=stats.live_workers)
        yield _histogram(
            counters, "step_seconds", "omost_render_step_seconds", "Seconds per sampling step.", STEP_SECONDS_BUCKETS
        )
        yield _histogram(
            counters,
            "render_seconds",
            "omost_render_duration_seconds",
            "Seconds from start of rendering to images ready, per succeeded job.",
            RENDER_SECONDS_BUCKETS,
        )
        yield _histogram(
            counters,
            "queue_wait_seconds",
            "omost_render_queue_wait_seconds",
            "Seconds from a job's submission to a worker starting it.",
            QUEUE_WAIT_SECONDS_BUCKETS,
        )
        phases = HistogramMetricFamily(
            "omost_render_phase_seconds",
            "Seconds a worker spent in each phase of a job (encode, denoise, decode: once per batch).",
            labels=["phase"],
        )
        for phase in PHASES:
            _add_buckets(phases, [phase], counters, phase_key(phase), PHASE_SECONDS_BUCKETS)
        yield phases
        yield from self._workers(stats)
        webhooks = CounterMetricFamily("omost_render_webhooks", "Webhooks sent, by outcome.", labels=["outcome"])
        for outcome in WEBHOOK_OUTCOMES:
            webhooks.add_metric([outcome], counters.get(webhook_key(outcome), 0.0))
        yield webhooks
        errors = CounterMetricFamily(
            "omost_render_image_store_errors", "Failed calls to the S3 image store, by operation.", labels=["operation"]
        )
        for operation in IMAGE_STORE_OPERATIONS:
            errors.add_metric([operation], counters.get(image_store_error_key(operation), 0.0))
        yield errors

    @staticmethod
    def _workers(stats: QueueStats) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "omost_render_busy_seconds",
            "Seconds workers spent rendering, all workers together (busy ratio: its rate over omost_render_workers).",
            value=stats.counters.get(BUSY_SECONDS_KEY, 0.0),
        )
        beats = GaugeMetricFamily(
            "omost_render_worker_last_heartbeat_timestamp_seconds",
            "Unix time of each worker's last heartbeat (silent workers are dropped after 10 minutes).",
            labels=["worker"],
        )
        for name, at in sorted(stats.heartbeats.items()):
            beats.add_metric([name], at)
        yield beats
        busy = GaugeMetricFamily(
            "omost_render_worker_busy", "Whether each live worker holds a job now (1) or waits (0).", labels=["worker"]
        )
        for name, holding in sorted(stats.busy.items()):
            busy.add_metric([name], float(holding))
        yield busy


def _add_buckets(
    family: HistogramMetricFamily, labels: list[str], counters: dict[str, float], key: str, bounds: tuple[float, ...]
) -> None:
    buckets = [(str(float(b)), counters.get(f"{key}_bucket:{b}", 0.0)) for b in bounds]
    buckets.append(("+Inf", counters.get(f"{key}_bucket:+Inf", 0.0)))
    family.add_metric(labels, buckets, sum_value=counters.get(f"{key}_sum", 0.0))


def _histogram(
    counters: dict[str, float], key: str, name: str, doc: str, bounds: tuple[float, ...]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[])
    _add_buckets(family, [], counters, key, bounds)
    return family


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(settings: SettingsDep, store: StoreDep) -> Response:
    """Prometheus text format. With Redis unreachable it still answers, saying so (``omost_render_redis_up 0``)."""
    stats: QueueStats | None
    try:
        stats = await store.stats(live_within=3 * settings.heartbeat_interval, now=time.time())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        stats = None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats, settings.max_queue_depth))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
