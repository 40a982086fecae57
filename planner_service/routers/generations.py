"""``POST /v1/generations``: plan, then queue the render job, in one call (202)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from redis.exceptions import RedisError

from planner_service.conversations import StoreUnavailable
from planner_service.dependencies import get_settings, require_token
from planner_service.schemas import GenerationRequest
from planner_service.service import PlanService
from planner_service.settings import PlannerSettings
from shared.canvas import Canvas, GlobalDescription
from shared.jobs import RenderRequest
from shared.plans import GenerationAccepted
from shared.queue import job_urls, submit

router = APIRouter(prefix="/v1", tags=["generations"], dependencies=[Depends(require_token)])

_PLACEHOLDER = Canvas(global_description=GlobalDescription(description="placeholder", HTML_web_color_name="white"))


def _render_request(render: dict, canvas: Canvas) -> RenderRequest:
    try:
        return RenderRequest.model_validate({**render, "canvas": canvas})
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", "render", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


@router.post("/generations", status_code=202, response_model=GenerationAccepted, response_model_by_alias=True)
async def create_generation(
    body: GenerationRequest, request: Request, settings: PlannerSettings = Depends(get_settings)
) -> GenerationAccepted:
    # Check the render parameters first: a bad width should not cost a plan.
    _render_request(body.render, _PLACEHOLDER)
    service: PlanService = request.app.state.plan_service
    plan = await service.plan(body.model_copy(update={"stream": False}))
    render_request = _render_request(body.render, plan.canvas)
    try:
        job_id, _ = await submit(
            request.app.state.redis,
            render_request,
            prefix=settings.key_prefix,
            ttl_seconds=settings.render_job_ttl_seconds,
            max_queue_depth=settings.max_queue_depth,
        )
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
