"""The render API's failures and their statuses; the wire format (problem details) and the one
handler that writes it live in :mod:`shared.service.problems`."""

from __future__ import annotations

from collections.abc import Callable

import redis.exceptions

from render_service.store import JobFinished, JobNotFound
from shared.queue import IdempotencyConflict, QueueFull
from shared.service.problems import ServiceError


class JobStoreUnavailable(ServiceError):
    # Not the client's fault and usually brief: 503 + Retry-After invites a retry.
    http_status = 503

    def __init__(self) -> None:
        super().__init__("the job store (Redis) is unavailable; try again shortly")


DOMAIN_ERRORS: tuple[type[Exception], ...] = (JobNotFound, JobFinished, IdempotencyConflict, QueueFull)
TRANSLATED: dict[type[Exception], Callable[[Exception], Exception]] = {
    redis.exceptions.ConnectionError: lambda exc: JobStoreUnavailable(),
    redis.exceptions.TimeoutError: lambda exc: JobStoreUnavailable(),
}
