"""``POST /v1/plans``: a prompt (and earlier turns, or a canvas to edit) in, a canvas out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends
from sse_starlette import EventSourceResponse

from planner_service.dependencies import PlanServiceDep
from planner_service.errors import error_body
from planner_service.schemas import PlanRequest, PlanResponse
from shared.service.auth import require_token
from shared.service.routing import StrictRoute

router = APIRouter(prefix="/v1", tags=["plans"], dependencies=[Depends(require_token)], route_class=StrictRoute)


@router.post(
    "/plans",
    response_model=PlanResponse,
    responses={
        200: {"description": "The canvas; with stream=true, Server-Sent Events (delta, retry, plan or error)."},
        400: {"description": "The request does not fit the model's context."},
        404: {"description": "Unknown or expired conversation_id."},
        502: {"description": "The LLM's answers did not parse (parse error and raw text included)."},
        503: {"description": "The LLM server (or Redis) is unreachable."},
    },
)
async def create_plan(body: PlanRequest, service: PlanServiceDep):
    if not body.stream:
        return await service.plan(body)
    events = service.stream(body)
    # Wait for the first event before answering, so that a missing conversation, an oversized
    # request or an unreachable LLM is still an HTTP status rather than an event in a 200 stream.
    first = await events.__anext__()
    return EventSourceResponse(_sse(first, events))


async def _sse(first: tuple[str, object], events: AsyncIterator[tuple[str, object]]) -> AsyncIterator[dict]:
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
        await events.aclose()  # type: ignore[attr-defined]
