"""The queue's refusals and lookups that fail, each with the HTTP status the services answer."""

from __future__ import annotations

import redis.exceptions


class QueueFull(Exception):
    """The stream of ``model`` holds ``depth`` jobs, at or over the configured limit (it holds per model)."""

    http_status = 429  # the services' problem handlers read it (the contract imports no web framework)

    def __init__(self, depth: int, limit: int, model: str | None = None) -> None:
        # The model is named: the limit is each model's, so another model's jobs may still be taken.
        whose = f" for model {model!r}" if model is not None else ""
        super().__init__(f"the render queue holds {depth} jobs{whose} (limit {limit}); try again later")
        self.depth = depth
        self.limit = limit
        self.model = model


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used for a different request."""

    http_status = 409

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"this Idempotency-Key was already used for job {job_id} with a different request body; "
            "use a new key for a new request"
        )
        self.job_id = job_id


class QuotaExceeded(Exception):
    """The submitter's own quota (a named token's: megapixel-steps per hour, jobs at once) is used up."""

    http_status = 429

    def __init__(self, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        # The services' problem handler sends these headers (else the default Retry-After).
        self.headers = {"Retry-After": str(retry_after)} if retry_after else None

    @classmethod
    def work(cls, hourly: float, used: float, retry_after: int | None = None) -> QuotaExceeded:
        return cls(
            f"this token's quota of {hourly:g} megapixel-steps per hour is used up ({used:g} in the last hour)",
            retry_after,
        )

    @classmethod
    def jobs(cls, active: int, at_once: int) -> QuotaExceeded:
        return cls(f"this token already has {active} jobs queued or running (its quota: {at_once})")


class OverBudget(Exception):
    """The job asks for more megapixel-steps than the deployment's budget allows (a 422 at the edge)."""

    http_status = 422

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobNotFound(LookupError):
    http_status = 404  # read by the API's problem handler

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no render job with id {job_id!r} (unknown, or expired after its TTL)")


class JobFinished(Exception):
    """Cancel of a job that already ended."""

    http_status = 409

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"render job {job_id} already ended ({status}); nothing to cancel")
        self.status = status


class NotReplicated(redis.exceptions.ConnectionError):
    """A write the primary applied that fewer replicas than required acknowledged in time (``WAIT``).

    A connection error on purpose: the services answer it like an unreachable Redis (503 +
    Retry-After; a submit retried with its Idempotency-Key replays the job if it was kept) and the
    worker's retry policy retries it like one.
    """

    def __init__(self, acked: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(
            f"the write reached {acked} of the {wanted} replica(s) required within {timeout_ms} ms "
            "(OMOST_REDIS_WAIT_REPLICAS)"
        )
        self.acked = acked
        self.wanted = wanted
