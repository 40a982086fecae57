"""The render API's failures and their statuses; the wire format (problem details) and the one
handler that writes it live in :mod:`shared.service.problems`."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis.exceptions

from render_service.api.event_hub import TooManyStreams
from shared.queue import IdempotencyConflict, ImageStoreUnavailable, JobFinished, JobNotFound, QueueFull, QuotaExceeded
from shared.service.auth import AdminViewOff
from shared.service.problems import ServiceError

log = logging.getLogger("render_service.api")

POOL_EXHAUSTED_MESSAGES = ("No connection available.", "Too many connections")
"""What redis-py says when every pooled connection is in use (BlockingConnectionPool after its
timeout; the plain pool at once): Redis itself may be fine."""


class JobStoreUnavailable(ServiceError):
    # Not the client's fault and usually brief: 503 + Retry-After invites a retry.
    http_status = 503

    def __init__(self, reason: str) -> None:
        super().__init__(f"the job store (Redis) is unreachable ({reason}); try again shortly")


class RedisPoolExhausted(ServiceError):
    http_status = 503

    def __init__(self) -> None:
        super().__init__(
            "every connection of this API process to Redis is busy (the pool is exhausted; Redis itself answers): "
            "the service is overloaded, try again shortly"
        )


def redis_failure(exc: Exception) -> Exception:
    """Say which it is: our pool ran out, or Redis cannot be reached."""
    if isinstance(exc, redis.exceptions.MaxConnectionsError) or str(exc) in POOL_EXHAUSTED_MESSAGES:
        return RedisPoolExhausted()
    # The client hears the kind of failure; Redis's address stays in the log.
    log.warning("redis unavailable: %s: %s", type(exc).__name__, exc)
    kind = "timed out" if isinstance(exc, redis.exceptions.TimeoutError) else "connection failed"
    return JobStoreUnavailable(kind)


DOMAIN_ERRORS: tuple[type[Exception], ...] = (
    JobNotFound,
    JobFinished,
    IdempotencyConflict,
    QueueFull,
    QuotaExceeded,
    ImageStoreUnavailable,
    TooManyStreams,
    AdminViewOff,
)
TRANSLATED: dict[type[Exception], Callable[[Exception], Exception]] = {
    redis.exceptions.ConnectionError: redis_failure,
    redis.exceptions.TimeoutError: redis_failure,
}
