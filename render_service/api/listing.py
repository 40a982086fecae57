"""``GET /v1/renders``: a page of the jobs this token submitted (all jobs without auth), read from the
submitter's index by :meth:`shared.queue.RenderQueue.page`."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.jobs import JobStatus, RenderJob
from shared.queue import RenderQueue, render_job
from shared.queue.repository import CURSOR_PATTERN, MAX_PAGE

__all__ = ["CURSOR_PATTERN", "MAX_PAGE", "RenderPage", "find_by_idempotency_key", "list_jobs"]


class RenderPage(BaseModel):
    """One page of ``GET /v1/renders``, newest first."""

    items: list[RenderJob]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null: no more jobs.")


async def list_jobs(
    queue: RenderQueue, submitter: str, *, limit: int, cursor: str | None, status: JobStatus | None, base_url: str
) -> RenderPage:
    records, next_cursor = await queue.page(submitter, limit=limit, cursor=cursor, status=status)
    return RenderPage(items=[render_job(r, base_url) for r in records], next_cursor=next_cursor)


async def find_by_idempotency_key(
    queue: RenderQueue, submitter: str, idempotency_key: str, base_url: str
) -> RenderJob | None:
    """The submitter's job submitted with this key, if any."""
    record = await queue.find_by_idempotency_key(submitter, idempotency_key)
    return render_job(record, base_url) if record is not None else None
