"""An Images API call's wait for its render: bounded, and tied to the client's connection.

The OpenAI-compatible route holds the client's connection open while the render runs (minutes on a
busy queue). Those waiting handlers are counted in Redis for all planner replicas together (a
:class:`~planner_service.admission.WaitingRoom`; 429 beyond, before any plan is spent), and a client
that hangs up (an SDK's timeout, say) cancels its job: nobody renders images nobody will receive.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from redis.exceptions import RedisError

from planner_service.admission import ClientGone, WaitingRoom, unless_disconnected
from shared.queue import JobFinished, JobNotFound, RenderQueue

log = logging.getLogger(__name__)

T = TypeVar("T")


def waiting_room(request: Request, limit: int) -> WaitingRoom:
    """The app's waiting room of Images API calls (made on first use, beside the plans' admission)."""
    room: WaitingRoom | None = getattr(request.app.state, "images_waiting", None)
    if room is None:
        settings = request.app.state.settings
        key = f"{settings.key_prefix}limits:{settings.limits_scope}:images-waiting"
        room = request.app.state.images_waiting = WaitingRoom(request.app.state.admission.places, key, limit)
    return room


async def unless_gone(request: Request, queue: RenderQueue, job_id: str, wait: Awaitable[T]) -> T:
    """Run ``wait``; if the client hangs up first, cancel the job ``job_id`` and raise :class:`ClientGone`."""
    try:
        return await unless_disconnected(request, wait)
    except ClientGone:
        # Queued: canceled at once; running: the worker stops at its next step.
        with contextlib.suppress(JobFinished, JobNotFound, RedisError):
            await queue.cancel(job_id)
        log.info("images call abandoned by its client; render canceled", extra={"fields": {"job": job_id}})
        raise
