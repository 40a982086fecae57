"""How the worker waits out Redis (and image store) outages: exponential backoff with jitter (tenacity)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.exceptions import BusyLoadingError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

log = logging.getLogger("render_service.worker")

REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    BusyLoadingError,  # "LOADING": Redis is replaying its AOF after a restart
)

T = TypeVar("T")


class Stopping(Exception):
    """Raised out of a retry loop when shutdown was requested while Redis was unreachable."""


class RetryPolicy:
    """Call a Redis operation, retrying connection errors with exponential backoff.

    ``forever`` is for reads: an idle worker can wait for Redis as long as it takes, but gives up
    promptly (raising :class:`Stopping`) once ``give_up()`` says so. Writes of results retry for
    ``write_seconds``; after that the entry stays pending and another worker reclaims it, so the
    job is still not lost.
    """

    def __init__(self, worker: str, write_seconds: float, give_up: Callable[[], bool]) -> None:
        self.worker = worker
        self.write_seconds = write_seconds
        self.give_up = give_up

    def __call__(
        self,
        fn: Callable[[], T],
        what: str,
        *,
        forever: bool = False,
        transient: Callable[[BaseException], bool] | None = None,
        seconds: float | None = None,
    ) -> T:
        """``transient`` and ``seconds`` retry another service's errors (the image store) instead of Redis's."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            fields = {"worker": self.worker, "action": what, "attempt": state.attempt_number, "error": repr(exc)}
            log.warning(f"{'store' if transient else 'redis'} unavailable, retrying", extra={"fields": fields})

        retrying = Retrying(
            retry=retry_if_exception(transient) if transient else retry_if_exception_type(REDIS_ERRORS),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
            stop=(lambda _state: self.give_up()) if forever else stop_after_delay(seconds or self.write_seconds),
            before_sleep=before_sleep,
            reraise=not forever,
        )
        try:
            return retrying(fn)
        except Exception as exc:
            if forever and self.give_up():
                raise Stopping from exc
            raise
