"""``POST /v1/generations``: plan, then queue the render job, in one call (202)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from redis.exceptions import RedisError

from planner_service.admission import AdmissionDep, unless_disconnected
from planner_service.conversations import StoreUnavailable
from planner_service.dependencies import PlanServiceDep, QueueDep, SettingsDep
from planner_service.schemas import GenerationRequest
from planner_service.service import PlanService
from planner_service.settings import PlannerSettings
from shared.canvas import Canvas, GlobalDescription
from shared.jobs import RenderRequest
from shared.plans import GenerationAccepted
from shared.queue import RenderQueue, job_urls
from shared.service.auth import require_token, token_owner
from shared.service.problems import field_errors
from shared.service.routing import StrictRoute
from shared.service.submission import check_budget, submit_render

router = APIRouter(
    prefix="/v1", tags=["generations"], dependencies=[Depends(require_token)], route_class=StrictRoute
)

_RENDER = ("body", "render")
_PLACEHOLDER = Canvas(global_description=GlobalDescription(description="placeholder", HTML_web_color_name="white"))


def _render_request(render: dict, canvas: Canvas) -> RenderRequest:
    # Strict JSON validation, as at the render API's edge: "width": "64" is an error, not 64.
    document = json.dumps({**render, "canvas": canvas.model_dump(mode="json")})
    try:
        return RenderRequest.model_validate_json(document, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError(field_errors(errors, prefix=("body", "render"))) from None


@router.post(
    "/generations",
    status_code=202,
    response_model=GenerationAccepted,
    response_model_by_alias=True,
    responses={
        404: {"description": "Unknown or expired conversation_id."},
        429: {"description": "The planner is at its limit of plans in flight, or the render queue is full."},
        502: {"description": "The LLM's answers did not parse (parse error and raw text included)."},
        503: {"description": "The LLM server (or Redis) is unreachable."},
        504: {"description": "The plan ran past OMOST_PLANNER_PLAN_TIMEOUT_SECONDS (streamed: its complete calls)."},
    },
)
async def create_generation(
    body: GenerationRequest,
    service: PlanServiceDep,
    settings: SettingsDep,
    queue: QueueDep,
    admission: AdmissionDep,
    request: Request,
) -> GenerationAccepted:
    # Check the render parameters first: a bad width or a job over budget should not cost a plan.
    check_budget(queue, _render_request(body.render, _PLACEHOLDER), loc=_RENDER)
    slot = admission.admit()
    try:
        # A client that hangs up stops the plan and never gets a render queued in its name.
        return await unless_disconnected(request, _plan_and_queue(body, service, settings, queue, request))
    finally:
        slot.release()


async def _plan_and_queue(
    body: GenerationRequest,
    service: PlanService,
    settings: PlannerSettings,
    queue: RenderQueue,
    request: Request,
) -> GenerationAccepted:
    plan = await service.plan(body.model_copy(update={"stream": False}))
    render_request = _render_request(body.render, plan.canvas)
    try:
        # The job is the token's, as if submitted to the render API with it.
        job_id, _ = await submit_render(queue, render_request, submitter=token_owner(request), loc=_RENDER)
    except RedisError as exc:
        raise StoreUnavailable(f"the render queue (Redis) is unavailable: {exc}") from exc
    return GenerationAccepted(
        id=job_id,
        status="queued",
        canvas=plan.canvas,
        code=plan.code,
        conversation_id=plan.conversation_id,
        urls=job_urls(job_id, render_request.num_images, settings.render_api_url),
    )
