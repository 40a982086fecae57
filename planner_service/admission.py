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

from shared.service.leases import Counter, Full, Lease, LeasedPlaces
from shared.service.problems import ServiceError
from shared.service.state import app_state

T = TypeVar("T")

CLIENT_CLOSED_REQUEST = 499  # nginx's name for it; nobody reads the answer, the log does


class PlannerBusy(ServiceError):
    http_status = 429

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the planner is already working on {limit} plans (its limit for all replicas together, "
            "OMOST_PLANNER_MAX_CONCURRENT_PLANS); try again after Retry-After seconds"
        )


class ClientGone(ServiceError):
    http_status = CLIENT_CLOSED_REQUEST

    def __init__(self) -> None:
        super().__init__("the client closed the connection; the plan was stopped")


class Admission:
    """Plans in flight, counted in Redis (:mod:`shared.service.leases`) so the limit holds for every
    planner replica together."""

    def __init__(self, places: LeasedPlaces, key: str, limit: int) -> None:
        self.places = places
        self.counter = Counter(key, limit, "{held} plans in flight (limit {limit})")
        self.limit = limit

    async def admit(self) -> Lease:
        """A place for one plan, or :class:`PlannerBusy` (429) when all ``limit`` are taken. No
        waiting line: the client's retry (after Retry-After) is the queue, and it costs us nothing."""
        try:
            return await self.places.acquire([self.counter])
        except Full:
            raise PlannerBusy(self.limit) from None

    async def in_flight(self) -> int:
        return await self.places.held(self.counter.key)


class TooManyWaiting(ServiceError):
    http_status = 429

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"{limit} image requests are already waiting for their renders (the limit for all replicas together, "
            "OMOST_PLANNER_IMAGES_MAX_WAITING); try again after Retry-After seconds"
        )


class WaitingRoom:
    """Handlers that hold a client's connection open while its render runs (the Images API), counted in
    Redis for all replicas together: each holds a connection, a poll loop and, for a while, a plan."""

    def __init__(self, places: LeasedPlaces, key: str, limit: int) -> None:
        self.places = places
        self.counter = Counter(key, limit, "{held} waiting (limit {limit})")
        self.limit = limit

    async def admit(self) -> Lease:
        try:
            return await self.places.acquire([self.counter])
        except Full:
            raise TooManyWaiting(self.limit) from None


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
