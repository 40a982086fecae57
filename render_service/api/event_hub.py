"""Live job events for every open SSE stream of one API process through ONE Redis connection.

A blocking ``XREAD`` per stream would hold a pooled connection for as long as the client stays
connected, so 101 idle streams took the whole 100-connection pool and every other request failed.
Here a stream reads its history with short non-blocking reads (a pooled connection for a moment),
then hands its cursor to the hub, whose single reader blocks on all watched event streams at once
(``XREAD`` takes many keys) and fans the entries out. Streams are capped per client and in total,
counted in Redis so the caps hold for all API replicas together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis.asyncio
import redis.exceptions

from shared.jobs import TERMINAL_STATUSES, JobEvent
from shared.queue import RenderQueue
from shared.queue.repository import EVENTS_PER_READ
from shared.service.leases import Counter, Full, Lease, LeasedPlaces
from shared.service.problems import ServiceError

log = logging.getLogger("render_service.api.events")

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
BLOCK_MS = 250
"""How long the hub's read blocks: also the longest a new stream waits to join it (its history it
has already read itself, so joining late loses nothing)."""
IDLE_CHECK_SECONDS = 5.0
"""A stream that heard nothing for this long checks the job's status (expired or ended unseen)."""


class TooManyStreams(ServiceError):
    http_status = 429

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


def _id(value: str) -> tuple[int, int]:
    first, _, second = value.partition("-")
    return int(first), int(second or 0)


@dataclass(eq=False)
class _Watch:
    job_id: str
    cursor: str
    queue: asyncio.Queue[list[tuple[str, dict[str, str]]] | BaseException] = field(default_factory=asyncio.Queue)


class EventHub:
    def __init__(
        self,
        queue: RenderQueue,
        reader: redis.asyncio.Redis,
        *,
        places: LeasedPlaces,
        max_streams: int,
        max_per_client: int,
        scope: str = "render",
    ) -> None:
        self.queue = queue  # short reads on pooled connections: history, status checks
        self.reader = reader  # the hub's own connection, outside the pool
        self.max_streams = max_streams
        self.max_per_client = max_per_client
        self.places = places
        self.scope = scope
        self._watches: dict[str, set[_Watch]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- admission

    async def admit(self, client_id: str) -> Lease:
        """A place for a new stream of ``client_id``, counted in Redis for all API replicas together;
        raise :class:`TooManyStreams` (429) over the client's cap or the total."""
        counters = [
            Counter(
                self._key(f"client:{client_id}"),
                self.max_per_client,
                "this client already has {held} open event streams (limit {limit}); close one, "
                "or poll GET /v1/renders/{{id}}",
            ),
            Counter(
                self._key("all"),
                self.max_streams,
                "the service has {held} open event streams in all (limit {limit}); try again shortly, "
                "or poll GET /v1/renders/{{id}}",
            ),
        ]
        try:
            return await self.places.acquire(counters)
        except Full as exc:
            raise TooManyStreams(str(exc)) from None

    async def open_streams(self) -> int:
        return await self.places.held(self._key("all"))

    def _key(self, what: str) -> str:
        return f"{self.queue.keys.prefix}limits:{self.scope}:streams:{what}"

    # ---------------------------------------------------------------- lifetime

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---------------------------------------------------------------- reading

    async def events(self, job_id: str, after: str = "0-0") -> AsyncIterator[tuple[str, JobEvent]]:
        """The job's events after ``after``, history first, until a terminal status event (or the
        job ends or expires unseen). Raises Redis's connection errors if it goes away."""
        cursor = after
        while True:  # history: a pooled connection only for each short read
            entries = await self.queue.history(job_id, cursor)
            for cursor, event in entries:
                yield cursor, event
                if _terminal(event):
                    return
            if len(entries) < EVENTS_PER_READ:
                break
        if await self.queue.has_ended(job_id):
            # A resumed stream of a finished job (Last-Event-ID at its end): nothing to wait for.
            for entry_id, event in await self.queue.history(job_id, cursor):
                yield entry_id, event
            return
        watch = _Watch(job_id, cursor)
        self._add(watch)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(watch.queue.get(), IDLE_CHECK_SECONDS)
                except TimeoutError:
                    if not await self.queue.has_ended(job_id):
                        continue
                    # Ended (or expired) without the hub seeing the terminal event: read once
                    # more, in case it was written meanwhile, then stop.
                    for entry_id, event in await self.queue.history(job_id, watch.cursor):
                        yield entry_id, event
                    return
                if isinstance(item, BaseException):
                    raise item
                for entry_id, fields in item:
                    event = self.queue.event_of(fields)
                    yield entry_id, event
                    if _terminal(event):
                        return
        finally:
            self._remove(watch)

    def _add(self, watch: _Watch) -> None:
        self._watches.setdefault(watch.job_id, set()).add(watch)
        self._changed.set()

    def _remove(self, watch: _Watch) -> None:
        watchers = self._watches.get(watch.job_id)
        if watchers is not None:
            watchers.discard(watch)
            if not watchers:
                del self._watches[watch.job_id]

    async def _run(self) -> None:
        while True:
            if not self._watches:
                self._changed.clear()
                await self._changed.wait()
                continue
            cursors = {job_id: min((w.cursor for w in watchers), key=_id) for job_id, watchers in self._watches.items()}
            try:
                found = await self.queue.follow(self.reader, cursors, BLOCK_MS)
            except REDIS_ERRORS as exc:
                # Every stream ends; its client reconnects with Last-Event-ID and misses nothing.
                log.warning("event hub: redis unavailable (%s)", exc)
                for watchers in list(self._watches.values()):
                    for watch in watchers:
                        watch.queue.put_nowait(exc)
                self._watches.clear()
                await asyncio.sleep(1.0)
                continue
            except Exception:  # never let one bad entry stop every stream of the process
                log.exception("event hub: read failed")
                await asyncio.sleep(1.0)
                continue
            for job_id, entries in found.items():
                for watch in list(self._watches.get(job_id, ())):
                    fresh = [(i, f) for i, f in entries if _id(i) > _id(watch.cursor)]
                    if fresh:
                        watch.cursor = fresh[-1][0]
                        watch.queue.put_nowait(fresh)


def _terminal(event: JobEvent) -> bool:
    return event.type == "status" and event.status in TERMINAL_STATUSES
