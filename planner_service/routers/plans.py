"""``POST /v1/plans``: a prompt (and earlier turns, or a canvas to edit) in, a canvas out."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import APIRouter, Depends, Request
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from planner_service.admission import AdmissionDep, unless_disconnected
from planner_service.dependencies import PlanServiceDep
from planner_service.errors import error_body
from planner_service.schemas import PlanRequest, PlanResponse
from shared.plans import PLAN_EVENTS, PlanDelta, PlanError, PlanRetry, plan_event_sse
from shared.service.auth import caller, require_token
from shared.service.leases import Lease
from shared.service.routing import StrictRoute

router = APIRouter(prefix="/v1", tags=["plans"], dependencies=[Depends(require_token)], route_class=StrictRoute)


# One Server-Sent Event: ``data`` is the JSON of the contract's model of that event (shared.plans:
# PlanDelta, PlanRetry, PlanResult, PlanError).
_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": list(PLAN_EVENTS)},
        "data": {"type": "string"},
    },
}
_Streamed = AsyncGenerator[PlanDelta | PlanRetry | PlanResponse, None]


@router.post(
    "/plans",
    response_model=PlanResponse,
    responses={
        200: {
            "description": "The canvas; with stream=true, Server-Sent Events (delta, retry, plan or error).",
            "content": {"text/event-stream": {"schema": _EVENT}},
        },
        400: {"description": "The request does not fit the model's context."},
        404: {"description": "Unknown or expired conversation_id."},
        429: {"description": "The planner is at its limit of plans in flight; retry after `Retry-After`."},
        502: {"description": "The LLM's answers did not parse (parse error and raw text included)."},
        503: {"description": "The LLM server (or Redis) is unreachable."},
        504: {"description": "The plan ran past OMOST_PLANNER_PLAN_TIMEOUT_SECONDS (streamed: its complete calls)."},
    },
)
async def create_plan(
    body: PlanRequest, service: PlanServiceDep, admission: AdmissionDep, request: Request
) -> PlanResponse | EventSourceResponse:
    slot = await admission.admit()  # 429 beyond the limit, before any work
    if not body.stream:
        try:
            return await unless_disconnected(request, service.plan(body, caller(request)))
        finally:
            await slot.release()
    events = service.stream(body, caller(request))
    try:
        # Wait for the first event before answering, so that a missing conversation, an oversized
        # request or an unreachable LLM is still an HTTP status rather than an event in a 200 stream.
        first = await unless_disconnected(request, events.__anext__())
    except BaseException:
        await slot.release()
        await events.aclose()
        raise
    # Once streaming, the SSE response stops the generator when the client hangs up.
    return EventSourceResponse(_sse(first, events, slot), background=BackgroundTask(slot.release))


async def _sse(
    first: PlanDelta | PlanRetry | PlanResponse, events: _Streamed, slot: Lease
) -> AsyncIterator[dict[str, str]]:
    try:
        event = first
        while True:
            yield plan_event_sse(event)
            if isinstance(event, PlanResponse):
                return
            event = await events.__anext__()
    except StopAsyncIteration:
        return
    except Exception as exc:
        _status, body = error_body(exc)  # re-raises anything that is not a known planner failure
        yield plan_event_sse(PlanError.model_validate(body))
    finally:
        await slot.release()
        await events.aclose()
