"""What the workers (and the render API) count into the deployment's metrics hash in Redis, beside
what :mod:`shared.queue`'s transitions count there themselves.

Counters live in Redis, not in each process, so the render API's ``/metrics`` reports every worker
(see :mod:`render_service.api.health`). The functions below only *buffer* commands on a pipeline;
callers send them best effort: a lost observation must never fail or slow a job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import redis

from shared.queue import QueueKeys, queue_observe

PHASE_SECONDS_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 120)
"""Seconds per job phase: a PNG encode takes milliseconds, a CPU denoise a minute, a GPU one about 2 s."""

PHASES = ("encode", "denoise", "decode", "png", "settle")
"""The phases of a job on a worker: text encoding, denoising, VAE decode (the engine's timings), PNG
encoding, then settling (images stored in Redis or uploaded to S3, and the record written)."""

WEBHOOK_OUTCOMES = ("delivered", "rejected", "refused", "failed")
"""How a webhook ended: a 2xx; another 4xx/3xx answer; an address the settings forbid; no answer after
the retries (see :func:`render_service.webhooks.deliver`, whose outcome string starts with one of these)."""

IMAGE_STORE_OPERATIONS = ("upload", "read", "sweep")
"""What failed against the S3 image store: a worker's upload (after its retries; the job fails), an
API read or presign, a worker's sweep of expired images."""


def phase_key(phase: str) -> str:
    return f"phase_seconds:{phase}"


def webhook_key(outcome: str) -> str:
    return f"webhooks_total:{outcome}"


def image_store_error_key(operation: str) -> str:
    return f"image_store_errors_total:{operation}"


BUSY_SECONDS_KEY = "busy_seconds_total"


def observe_phases(pipe: Any, keys: QueueKeys, seconds: Mapping[str, float]) -> None:
    """Count the seconds of each known phase (others, such as ``total``, are not phases)."""
    for phase, value in seconds.items():
        if phase in PHASES:
            queue_observe(pipe, keys, phase_key(phase), value, PHASE_SECONDS_BUCKETS)


def count_busy(pipe: Any, keys: QueueKeys, seconds: float) -> None:
    """A worker spent ``seconds`` rendering: the busy ratio is this counter's rate over the live workers."""
    pipe.hincrbyfloat(keys.metrics, BUSY_SECONDS_KEY, seconds)


def webhook_outcome(outcome: str) -> str:
    """The outcome's kind: ``"delivered: HTTP 200 after 1 attempt(s)"`` -> ``delivered``."""
    word = outcome.split(":", 1)[0].split(" ", 1)[0]
    return word if word in WEBHOOK_OUTCOMES else "failed"


def count_webhook(pipe: Any, keys: QueueKeys, outcome: str) -> None:
    pipe.hincrby(keys.metrics, webhook_key(webhook_outcome(outcome)), 1)


def count_image_store_error(pipe: Any, keys: QueueKeys, operation: str) -> None:
    assert operation in IMAGE_STORE_OPERATIONS, operation
    pipe.hincrby(keys.metrics, image_store_error_key(operation), 1)


def send_counts(client: redis.Redis, write: Callable[[Any], object]) -> None:
    """Send what ``write`` buffers on a pipeline of ``client``, best effort: a lost count never fails a job."""
    try:
        with client.pipeline(transaction=False) as pipe:
            write(pipe)
            pipe.execute()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        pass
