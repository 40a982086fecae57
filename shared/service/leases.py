"""Places counted in Redis with leases, so a limit holds for every replica of a service together
(plans in flight, open event streams) and a crashed replica's places come back by themselves.

A counter is a sorted set: one member per held place, scored with the Unix time (ms, Redis's clock)
its lease ends. Taking places is one Lua script that drops expired members, checks every counter a
place needs (e.g. the client's streams and all streams) and adds to all of them or to none. Each
process renews the leases it holds every third of the lease; a process that dies stops renewing,
and its places expire after at most one lease. Redis's own clock (``TIME``) is the only clock, so
replicas' clock skew does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio
from redis.exceptions import RedisError

from shared.service.problems import ServiceError

log = logging.getLogger("shared.service.leases")

_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

ACQUIRE_SCRIPT = (
    _NOW_MS
    + """
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local held = redis.call('ZCARD', key)
  if held >= tonumber(ARGV[2 + i]) then return {i, held} end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[2])
  redis.call('PEXPIRE', key, lease * 2)
end
return {0, 0}
"""
)
"""KEYS: the counters; ARGV: lease ms, the place's id, then each counter's limit. Answers ``{0, 0}``
(taken in all) or ``{i, held}``: counter ``i`` (1-based) is full with ``held`` places."""

RENEW_SCRIPT = (
    _NOW_MS
    + """
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease, ARGV[1 + i])
  redis.call('PEXPIRE', key, lease * 2)
end
return #KEYS
"""
)
"""KEYS: counters; ARGV: lease ms, then the member held in each counter (``XX``: a place that
expired meanwhile is not brought back)."""


class LimitsUnavailable(ServiceError):
    http_status = 503

    def __init__(self, exc: Exception) -> None:
        super().__init__(f"the limits store (Redis) is unavailable: {exc}")


@dataclass(frozen=True)
class Counter:
    """One counted limit: its Redis key, its limit, and what a refusal by it says."""

    key: str
    limit: int
    refusal: str
    """Formatted with ``held`` and ``limit``."""


class Full(Exception):
    """A counter is at its limit; ``counter`` and ``held`` say which and how full."""

    def __init__(self, counter: Counter, held: int) -> None:
        super().__init__(counter.refusal.format(held=held, limit=counter.limit))
        self.counter = counter
        self.held = held


class Lease:
    """One held place (in one or more counters); :meth:`release` (idempotent) gives it back."""

    def __init__(self, leases: LeasedPlaces, member: str, keys: tuple[str, ...]) -> None:
        self._leases = leases
        self.member = member
        self.keys = keys
        self._held = True

    async def release(self) -> None:
        if self._held:
            self._held = False
            await self._leases._release(self)


class LeasedPlaces:
    """The places this process holds, renewed while it lives. ``start`` in the app's lifespan."""

    def __init__(self, client: redis.asyncio.Redis, lease_seconds: float) -> None:
        self.redis = client
        self.lease_ms = max(1000, int(lease_seconds * 1000))
        self._held: dict[str, Lease] = {}
        self._task: asyncio.Task[None] | None = None

    async def acquire(self, counters: Sequence[Counter]) -> Lease:
        """A place in every counter, or :class:`Full` naming the first one at its limit (all or none)."""
        member = uuid.uuid4().hex
        keys = tuple(c.key for c in counters)
        try:
            answer = await self.redis.eval(
                ACQUIRE_SCRIPT, len(keys), *keys, self.lease_ms, member, *(c.limit for c in counters)
            )
        except RedisError as exc:
            raise LimitsUnavailable(exc) from exc
        full, held = int(answer[0]), int(answer[1])
        if full:
            raise Full(counters[full - 1], held)
        lease = Lease(self, member, keys)
        self._held[member] = lease
        return lease

    async def held(self, key: str) -> int:
        """Places held now in the counter ``key`` (expired leases not counted)."""
        now_ms = await self._now_ms()
        return int(await self.redis.zcount(key, now_ms, "+inf"))

    async def _now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def _release(self, lease: Lease) -> None:
        self._held.pop(lease.member, None)
        # Unreachable Redis: the place comes back when its lease ends.
        with contextlib.suppress(RedisError):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in lease.keys:
                    pipe.zrem(key, lease.member)
                await pipe.execute()

    # --- renewal ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew_forever(), name="lease-renewal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def renew(self) -> None:
        pairs = [(key, lease.member) for lease in list(self._held.values()) for key in lease.keys]
        if pairs:
            keys, members = zip(*pairs, strict=True)
            await self.redis.eval(RENEW_SCRIPT, len(keys), *keys, self.lease_ms, *members)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self.renew()
            except RedisError as exc:
                log.warning("could not renew %d leased places: %s", len(self._held), exc)
