"""Who submitted a render job: written at submit by whichever service queued it (the render API,
or the planner's ``POST /v1/generations``), read by the render API before it shows or cancels a job.

The owner (a digest of the submitting token, see :func:`shared.service.auth.token_owner`) is a
field of the job record, so it lives exactly as long as the record; a per-owner index (a sorted
set by submit time) lists an owner's jobs.
"""

from __future__ import annotations

import time

import redis.asyncio

from shared.queue import QueueKeys

OWNER_FIELD = "submitter"
"""The record field with the submitter's digest (the queue protocol's ``owner`` field is another
thing: the lease token of the worker running the job)."""


def index_key(keys: QueueKeys, owner: str) -> str:
    return f"{keys.prefix}render-index:{owner}"


def idempotency_scope(owner: str, key: str) -> str:
    """The Idempotency-Key as stored: scoped to the credential, so two clients never share one."""
    return f"{owner}:{key}"


async def record_owner(
    client: redis.asyncio.Redis, keys: QueueKeys, owner: str, job_id: str, ttl_seconds: int
) -> None:
    """Mark a just-created job as ``owner``'s and add it to the owner's index. Called before the
    submitter learns the id, so nobody can ask for the job before it has its owner. Index entries
    older than the TTL are dropped here: their records have expired anyway."""
    now_ms = int(time.time() * 1000)
    key = index_key(keys, owner)
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job(job_id), OWNER_FIELD, owner)
        pipe.zadd(key, {job_id: now_ms})
        pipe.zremrangebyscore(key, "-inf", now_ms - ttl_seconds * 1000)
        pipe.expire(key, ttl_seconds)
        await pipe.execute()
