"""Request rates per credential as a token bucket in Redis, so the rate holds for all replicas of a
service together: one Lua script refills the bucket by the time passed (Redis's clock) and takes
one token, or says how long until the next one."""

from __future__ import annotations

import math

import redis.asyncio
from fastapi import Request
from redis.exceptions import RedisError

from shared.service.leases import LimitsUnavailable
from shared.service.problems import ServiceError

TOKEN_BUCKET_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""
"""KEYS: the bucket (a hash: ``tokens``, ``at``); ARGV: tokens per second, bucket size. Answers the
seconds until a token is free: ``0`` means this request took one. A full bucket expires, so idle
credentials leave nothing behind."""


class RateLimited(ServiceError):
    http_status = 429

    def __init__(self, wait: float, rate: float, setting: str) -> None:
        super().__init__(
            f"too many requests with this credential (limit {rate:g} per second, {setting}); "
            f"try again after Retry-After seconds"
        )
        # Per refusal: the bucket says when the next token is free.
        self.headers = {"Retry-After": str(max(1, math.ceil(wait)))}  # type: ignore[misc]


async def take(client: redis.asyncio.Redis, key: str, *, rate: float, burst: int) -> float:
    """Take one token from the bucket ``key``: 0.0, or the seconds until one is free (nothing taken)."""
    try:
        answer = await client.eval(TOKEN_BUCKET_SCRIPT, 1, key, repr(rate), burst)
    except RedisError as exc:
        raise LimitsUnavailable(exc) from exc
    return float(answer.decode() if isinstance(answer, bytes) else answer)


async def check_rate(request: Request, who: str) -> None:
    """429 with ``Retry-After`` when ``who`` (a token's owner digest, or a client address) is over the
    service's ``rate_limit_per_second`` (off while unset)."""
    settings = request.app.state.settings
    rate = settings.rate_limit_per_second
    if rate is None:
        return
    key = f"{settings.key_prefix}limits:{settings.limits_scope}:rate:{who}"
    wait = await take(request.app.state.redis, key, rate=rate, burst=settings.rate_limit_burst)
    if wait > 0:
        prefix = settings.model_config.get("env_prefix", "")
        raise RateLimited(wait, rate, f"{prefix}RATE_LIMIT_PER_SECOND")
