"""Admission control of the planner: a bounded number of plans in flight (429 + Retry-After beyond,
so a burst never piles up on the LLM until its connection pool times out into false 503s), and
plans whose client went away are cancelled, their LLM request closed, before they can queue a render.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from shared.service.problems import ServiceError
from shared.service.state import app_state

T = TypeVar("T")

CLIENT_CLOSED_REQUEST = 499  # nginx's name for it; nobody reads the answer, the log does


class PlannerBusy(ServiceError):
    http_status = 429

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the planner is already working on {limit} plans (its limit, OMOST_PLANNER_MAX_CONCURRENT_PLANS); "
            "try again after Retry-After seconds"
        )


class ClientGone(ServiceError):
    http_status = CLIENT_CLOSED_REQUEST

    def __init__(self) -> None:
        super().__init__("the client closed the connection; the plan was stopped")


class Slot:
    """One admitted plan; :meth:`release` (idempotent) frees its place."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission.in_flight -= 1


class Admission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def admit(self) -> Slot:
        """A place for one plan, or :class:`PlannerBusy` (429) when all ``limit`` are taken. No
        waiting line: the client's retry (after Retry-After) is the queue, and it costs us nothing."""
        if self.in_flight >= self.limit:
            raise PlannerBusy(self.limit)
        self.in_flight += 1
        return Slot(self)


def get_admission(request: Request) -> Admission:
    return app_state(request, "admission", Admission)


AdmissionDep = Annotated[Admission, Depends(get_admission)]


async def _disconnect(request: Request) -> None:
    # Called once the body has been read: the next ASGI message is the client hanging up.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client hangs up first, cancel it (closing the LLM request it holds, so
    the LLM stops generating too) and raise :class:`ClientGone`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientGone()
    return task.result()
