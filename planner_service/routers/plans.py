"""``POST /v1/plans``: a prompt (and earlier turns, or a canvas to edit) in, a canvas out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from planner_service.admission import AdmissionDep, Slot, unless_disconnected
from planner_service.dependencies import PlanServiceDep
from planner_service.errors import error_body
from planner_service.schemas import PlanRequest, PlanResponse
from shared.service.auth import require_token
from shared.service.routing import StrictRoute

router = APIRouter(prefix="/v1", tags=["plans"], dependencies=[Depends(require_token)], route_class=StrictRoute)


# One Server-Sent Event: ``data`` is JSON ({"text"} for delta, the PlanResponse for plan, a problem
# for error, {"attempt", "error"} for retry).
_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["delta", "retry", "plan", "error"]},
        "data": {"type": "string"},
    },
}


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
async def create_plan(body: PlanRequest, service: PlanServiceDep, admission: AdmissionDep, request: Request):
    slot = admission.admit()  # 429 beyond the limit, before any work
    if not body.stream:
        try:
            return await unless_disconnected(request, service.plan(body))
        finally:
            slot.release()
    events = service.stream(body)
    try:
        # Wait for the first event before answering, so that a missing conversation, an oversized
        # request or an unreachable LLM is still an HTTP status rather than an event in a 200 stream.
        first = await unless_disconnected(request, events.__anext__())
    except BaseException:
        slot.release()
        await events.aclose()  # type: ignore[attr-defined]
        raise
    # Once streaming, the SSE response stops the generator when the client hangs up.
    return EventSourceResponse(_sse(first, events, slot), background=BackgroundTask(slot.release))


async def _sse(
    first: tuple[str, object], events: AsyncIterator[tuple[str, object]], slot: Slot
) -> AsyncIterator[dict]:
    try:
        kind, data = first
        while True:
            if kind == "delta":
                yield {"event": "delta", "data": json.dumps({"text": data})}
            elif kind == "retry":
                yield {"event": "retry", "data": json.dumps(data)}
            elif kind == "plan":
                assert isinstance(data, PlanResponse)
                yield {"event": "plan", "data": data.model_dump_json()}
                return
            kind, data = await events.__anext__()
    except StopAsyncIteration:
        return
    except Exception as exc:
        _status, body = error_body(exc)  # re-raises anything that is not a known planner failure
        yield {"event": "error", "data": json.dumps(body)}
    finally:
        slot.release()
        await events.aclose()  # type: ignore[attr-defined]
