"""Finding jobs: a per-owner index (a sorted set by submit time) written at submit, and the page
of ``GET /v1/renders`` read from it. The owner is the digest of the submitting token ("public"
without auth), so with auth on a token lists only what it submitted."""

from __future__ import annotations

import re

import redis.asyncio
from pydantic import BaseModel, Field

from shared.jobs import JobStatus, RenderJob
from shared.queue import QueueKeys, decode_hash, record_to_job, text
from shared.service.ownership import idempotency_scope, index_key

MAX_PAGE = 100
MAX_SCANNED = 1000  # index entries one request may read while filtering; bounds its cost
CURSOR_PATTERN = re.compile(r"^(\d{1,17}):([A-Za-z0-9_-]{1,64})$")


class RenderPage(BaseModel):
    """One page of ``GET /v1/renders``, newest first."""

    items: list[RenderJob]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null: no more jobs.")


async def list_jobs(
    client: redis.asyncio.Redis,
    keys: QueueKeys,
    owner: str,
    *,
    limit: int,
    cursor: str | None,
    status: JobStatus | None,
    base_url: str,
) -> RenderPage:
    key = index_key(keys, owner)
    top, after_id = "+inf", None
    if cursor and (match := CURSOR_PATTERN.match(cursor)):
        top, after_id = match.group(1), match.group(2)
    items: list[RenderJob] = []
    scanned, offset, last = 0, 0, None
    while len(items) < limit and scanned < MAX_SCANNED:
        batch = await client.zrevrangebyscore(key, top, "-inf", start=offset, num=MAX_PAGE, withscores=True)
        if not batch:
            return RenderPage(items=items, next_cursor=None)
        offset += len(batch)
        # Equal scores come in reverse id order: skip up to and including the cursor's job.
        entries = [(text(m), int(s)) for m, s in batch]
        if after_id is not None:
            entries = [(m, s) for m, s in entries if not (str(s) == top and m >= after_id)]
        async with client.pipeline(transaction=False) as pipe:
            for job_id, _ in entries:
                pipe.hgetall(keys.job(job_id))
            records = await pipe.execute()
        for (job_id, score), raw in zip(entries, records, strict=True):
            scanned += 1
            last = f"{score}:{job_id}"
            if raw:
                job = record_to_job(decode_hash(raw), base_url)
                if status is None or job.status == status:
                    items.append(job)
            if len(items) >= limit or scanned >= MAX_SCANNED:
                break
    return RenderPage(items=items, next_cursor=last)  # stopped on a full page or the scan bound


async def find_by_idempotency_key(
    client: redis.asyncio.Redis, keys: QueueKeys, owner: str, idempotency_key: str, base_url: str
) -> RenderJob | None:
    """The owner's job submitted with this key, if any (the key maps to one job id)."""
    stored = await client.get(keys.idempotency(idempotency_scope(owner, idempotency_key)))
    if stored is None:
        return None
    job_id = text(stored).partition(":")[0]
    if await client.zscore(index_key(keys, owner), job_id) is None:
        return None
    raw = await client.hgetall(keys.job(job_id))
    return record_to_job(decode_hash(raw), base_url) if raw else None
