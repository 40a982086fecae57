"""``/v1/renders``: submit, inspect, stream and cancel render jobs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from render_service.api.deps import HubDep, QueueDep, SettingsDep, base_url
from render_service.api.event_hub import REDIS_ERRORS
from render_service.api.listing import CURSOR_PATTERN, MAX_PAGE, RenderPage, find_by_idempotency_key, list_jobs
from render_service.metrics import image_store_error_key
from render_service.webhooks import WebhookRefused, check_webhook_syntax, check_webhook_url
from shared.jobs import JobStatus, RenderAccepted, RenderJob, RenderSubmission
from shared.queue import (
    ALL_SUBMITTERS,
    ImageRedirect,
    ImageStoreUnavailable,
    JobNotFound,
    JobRecord,
    RenderQueue,
    job_urls,
    render_job,
)
from shared.service.auth import PUBLIC_OWNER, identity, is_admin, may_see, require_token, token_owner
from shared.service.problems import ServiceError
from shared.service.routing import StrictRoute
from shared.service.submission import check_budget, fit_model, submit_render

log = logging.getLogger("render_service.api")

router = APIRouter(
    prefix="/v1/renders", tags=["renders"], dependencies=[Depends(require_token)], route_class=StrictRoute
)

JobId = Annotated[str, Path(description="The id POST /v1/renders returned.", max_length=64)]
# Every 4xx/5xx is documented as problem details by shared.service.problems; these add the meaning.
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong bearer token."},
    404: {"description": "Unknown or expired job id."},
}


# One Server-Sent Event of a job: ``data`` is a JobEvent as JSON; ``id`` resumes via Last-Event-ID.
_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["queued", "running", "progress", "succeeded", "failed", "canceled"]},
        "data": {"type": "string"},
        "id": {"type": "string"},
    },
}


class ImageUnavailable(ServiceError):
    def __init__(self, http_status: int, detail: str) -> None:
        super().__init__(detail)
        self.http_status = http_status


def _webhook_refusal(why: str) -> RequestValidationError:
    """The 422 of a webhook URL the API refuses, whichever check refused it."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", "webhook_url"), "msg": why}])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RenderAccepted,
    responses={
        401: _ERRORS[401],
        400: {"description": "Malformed JSON."},
        409: {"description": "Idempotency-Key reused (by this token) with a different body."},
        413: {"description": "Body over the size limit."},
        422: {"description": "A field is invalid, or the job is over the work budget; `detail` says which and why."},
        429: {"description": "Queue full, or this token's quota used up; retry after `Retry-After` seconds."},
    },
)
async def create_render(
    submission: RenderSubmission,
    request: Request,
    response: Response,
    settings: SettingsDep,
    queue: QueueDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="Retrying with the same key never queues twice. Keys are per token: another "
            "token's key of the same name is another key.",
        ),
    ] = None,
) -> RenderAccepted:
    """Queue a render. 202 means the job will reach a terminal status, whatever crashes meanwhile."""
    if submission.webhook_url:
        try:  # the URL's form first: a malformed one is a 422 even while Redis is down
            check_webhook_syntax(submission.webhook_url)
        except WebhookRefused as exc:
            raise _webhook_refusal(str(exc)) from None
    request_body = await fit_model(queue, submission.render_request())
    check_budget(queue, request_body)  # before the webhook's DNS lookup
    if submission.webhook_url:
        # getaddrinfo blocks: resolve in a thread so one slow DNS answer doesn't stall the server.
        try:
            await run_in_threadpool(
                check_webhook_url, submission.webhook_url, allow_private=settings.allow_private_webhooks
            )
        except WebhookRefused as exc:
            raise _webhook_refusal(str(exc)) from None
        except UnicodeError:  # the resolver's IDNA encoding of a host such as "a..b" or "\x80"
            raise _webhook_refusal("the host is not a valid host name") from None
    who = identity(request)
    job_id, created = await submit_render(
        queue,
        request_body,
        submitter=who.owner,
        quota=who.quota,
        idempotency_key=idempotency_key,
        webhook_url=submission.webhook_url,
    )
    job_status = "queued"
    num_images = 0
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
        job = render_job(await queue.read(job_id))
        job_status, num_images = job.status, job.num_images
    log.info("render queued", extra={"fields": {"job": job_id, "replayed": not created}})
    urls = job_urls(job_id, num_images, base_url(request, settings))
    response.headers["Location"] = urls.self_
    return RenderAccepted(id=job_id, status=job_status, urls=urls)


@router.get("", response_model=RenderPage, responses={401: _ERRORS[401]})
async def list_renders(
    request: Request,
    settings: SettingsDep,
    queue: QueueDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Jobs per page.")] = 20,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN.pattern, description="next_cursor of the previous page.")
    ] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs with this status.")] = None,
    idempotency_key: Annotated[
        str | None, Query(min_length=1, max_length=255, description="Only the job submitted with this key.")
    ] = None,
) -> RenderPage:
    """Jobs submitted with this token (all jobs without auth; every job, whoever submitted it, with the
    admin token), newest first, a page at a time."""
    owner, base = token_owner(request), base_url(request, settings)
    if idempotency_key is not None:
        job = await find_by_idempotency_key(queue, owner, idempotency_key, base)
        found = [job] if job is not None and (status is None or job.status == status) else []
        return RenderPage(items=found, next_cursor=None)
    listed = ALL_SUBMITTERS if is_admin(request) else owner
    return await list_jobs(queue, listed, limit=limit, cursor=cursor, status=status, base_url=base)


@router.get("/{job_id}", response_model=RenderJob, responses=_ERRORS)
async def get_render(job_id: JobId, request: Request, settings: SettingsDep, queue: QueueDep) -> RenderJob:
    """Status, place in the queue or progress, timings, error, seeds, model and image URLs of a job."""
    job = render_job(await visible_record(queue, job_id, request), base_url(request, settings))
    if job.status == "queued":
        job.queue_position = await queue.queue_position(job_id, model=job.request.model)
    return job


@router.get(
    "/{job_id}/images/{index}",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {"content": {"image/png": {}}},
        302: {"description": "S3 image store: a short-lived presigned URL of the PNG (`Location`)."},
        409: {"description": "Not succeeded (yet)."},
    },
)
async def get_image(
    job_id: JobId, index: Annotated[int, Path(ge=0, le=1000)], request: Request, queue: QueueDep
) -> Response:
    """The ``index``-th PNG of a succeeded job (or, with the S3 image store, a 302 to it)."""
    record = await visible_record(queue, job_id, request)
    if record.status != "succeeded":
        raise ImageUnavailable(409, f"render job {job_id} is {record.status}; images exist once it has succeeded")
    count = record.num_images
    if index >= count:
        raise ImageUnavailable(404, f"render job {job_id} has {count} image(s): index 0 to {count - 1}")
    try:
        data = await queue.image(record, index)
    except ImageStoreUnavailable:
        with contextlib.suppress(*REDIS_ERRORS):
            await queue.redis.hincrby(queue.keys.metrics, image_store_error_key("read"), 1)
        raise
    if isinstance(data, ImageRedirect):
        # Not cacheable: the presigned URL expires long before the image does.
        return RedirectResponse(data.url, status_code=status.HTTP_302_FOUND, headers={"Cache-Control": "no-store"})
    if data is None:
        raise ImageUnavailable(404, f"image {index} of render job {job_id} has expired")
    # A finished image never changes, so clients and proxies may keep it for its lifetime.
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"})


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        **_ERRORS,
        200: {"content": {"text/event-stream": {"schema": _EVENT}}},
        429: {"description": "Too many open event streams (this client's, or the server's)."},
    },
)
async def stream_events(
    job_id: JobId,
    request: Request,
    settings: SettingsDep,
    queue: QueueDep,
    hub: HubDep,
    last_event_id: Annotated[str | None, Header(description="Resume after this event id.")] = None,
) -> EventSourceResponse:
    """Server-Sent Events: the job's history so far, then live events until its terminal status.

    Event names: ``queued``, ``running``, ``progress`` (data has ``step`` and ``total``), and the
    terminal ``succeeded``/``failed``/``canceled``. Each event's ``id`` can be sent back as
    ``Last-Event-ID`` to resume without repeats.
    """
    await visible_record(queue, job_id, request)  # 404 before the stream starts
    after = last_event_id if last_event_id and _is_stream_id(last_event_id) else "0-0"
    owner = token_owner(request)
    ticket = await hub.admit(owner if owner != PUBLIC_OWNER else _client_address(request))  # 429 over a cap

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for event_id, event in hub.events(job_id, after):
                name = "progress" if event.type == "progress" else event.status
                yield {"id": event_id, "event": name, "data": event.model_dump_json(exclude_none=True)}
        except REDIS_ERRORS:
            # The client reconnects with Last-Event-ID and misses nothing.
            log.warning("event stream ended: redis unavailable", extra={"fields": {"job": job_id}})
        finally:
            await ticket.release()

    # The background task frees the place too if the stream ends before its first event is read.
    return EventSourceResponse(
        events(), ping=int(settings.sse_ping_seconds), background=BackgroundTask(ticket.release)
    )


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RenderJob,
    responses={**_ERRORS, 409: {"description": "The job already ended."}},
)
async def cancel_render(job_id: JobId, request: Request, settings: SettingsDep, queue: QueueDep) -> RenderJob:
    """Cancel: a queued job is ``canceled`` at once; a running one stops at its next sampling step."""
    await visible_record(queue, job_id, request)
    job = render_job(await queue.cancel(job_id), base_url(request, settings))
    log.info("render cancel requested", extra={"fields": {"job": job_id, "status": job.status}})
    return job


async def visible_record(queue: RenderQueue, job_id: str, request: Request) -> JobRecord:
    """The job's record if this request's token owns it (or is the admin's, or auth is off); a job
    of another token is "not found", exactly like an unknown id, so ids cannot be probed."""
    record = await queue.read(job_id)
    if not may_see(request, record.submitter):
        raise JobNotFound(job_id)
    return record


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _is_stream_id(value: str) -> bool:
    first, _, second = value.partition("-")
    return first.isdigit() and second.isdigit()
