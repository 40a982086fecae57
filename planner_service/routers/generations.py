"""``POST /v1/generations``: plan, then queue the render job, in one call (202)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from redis.exceptions import RedisError

from planner_service.conversations import StoreUnavailable
from planner_service.dependencies import PlanServiceDep, RedisDep, SettingsDep
from planner_service.schemas import GenerationRequest
from shared.canvas import Canvas, GlobalDescription
from shared.jobs import RenderRequest
from shared.plans import GenerationAccepted
from shared.queue import job_urls, submit
from shared.service.auth import require_token
from shared.service.problems import field_errors
from shared.service.routing import StrictRoute

router = APIRouter(
    prefix="/v1", tags=["generations"], dependencies=[Depends(require_token)], route_class=StrictRoute
)

_PLACEHOLDER = Canvas(global_description=GlobalDescription(description="placeholder", HTML_web_color_name="white"))


def _render_request(render: dict, canvas: Canvas) -> RenderRequest:
    # Strict JSON validation, as at the render API's edge: "width": "64" is an error, not 64.
    document = json.dumps({**render, "canvas": canvas.model_dump(mode="json")})
    try:
        return RenderRequest.model_validate_json(document, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError(field_errors(errors, prefix=("body", "render"))) from None


@router.post("/generations", status_code=202, response_model=GenerationAccepted, response_model_by_alias=True)
async def create_generation(
    body: GenerationRequest, service: PlanServiceDep, settings: SettingsDep, redis_client: RedisDep
) -> GenerationAccepted:
    # Check the render parameters first: a bad width should not cost a plan.
    _render_request(body.render, _PLACEHOLDER)
    plan = await service.plan(body.model_copy(update={"stream": False}))
    render_request = _render_request(body.render, plan.canvas)
    try:
        job_id, _ = await submit(
            redis_client,
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
