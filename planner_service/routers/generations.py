"""``POST /v1/generations``: plan, then queue the render job, in one call (202). The logic is
:mod:`planner_service.generation`; this module binds it to HTTP."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from planner_service.dependencies import GenerationsDep
from planner_service.schemas import GenerationRequest
from shared.plans import GenerationAccepted
from shared.service.auth import require_token
from shared.service.routing import StrictRoute

router = APIRouter(
    prefix="/v1", tags=["generations"], dependencies=[Depends(require_token)], route_class=StrictRoute
)


@router.post(
    "/generations",
    status_code=202,
    response_model=GenerationAccepted,
    response_model_by_alias=True,
    responses={
        404: {"description": "Unknown or expired conversation_id."},
        429: {"description": "The planner is at its limit of plans in flight, the render queue is full, or the "
              "token's quota is used up."},
        502: {"description": "The LLM's answers did not parse (parse error and raw text included)."},
        503: {"description": "The LLM server (or Redis) is unreachable."},
        504: {"description": "The plan ran past OMOST_PLANNER_PLAN_TIMEOUT_SECONDS (streamed: its complete calls)."},
    },
)
async def create_generation(
    body: GenerationRequest, generations: GenerationsDep, request: Request
) -> GenerationAccepted:
    return await generations.generate(body, request)
