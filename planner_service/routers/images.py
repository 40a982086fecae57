"""The OpenAI-compatible Images API bound to HTTP: ``POST /v1/images/generations`` and ``GET /v1/models``.

Apps that already speak OpenAI's Images API (its official SDK or anything modelled on it) point their
base URL here. The models are :mod:`planner_service.images.protocol`, the logic
:mod:`planner_service.images.serving`, and every failure on these routes takes OpenAI's error shape
through the route class of :mod:`planner_service.images.errors`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from planner_service.dependencies import GenerationsDep, QueueDep
from planner_service.images.errors import OpenAIErrorRoute
from planner_service.images.protocol import (
    ERROR_RESPONSES,
    MODEL_ID,
    ImageGenerationRequest,
    ImagesResponse,
    Model,
    ModelList,
)
from planner_service.images.serving import ImagesSettings, create_images
from shared.jobs import DEFAULT_MODEL
from shared.service.auth import require_token

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_token)], route_class=OpenAIErrorRoute)


def get_images_settings(request: Request) -> ImagesSettings:
    """Read once per app, at the first request (never at import)."""
    settings = getattr(request.app.state, "images_settings", None)
    if not isinstance(settings, ImagesSettings):
        settings = request.app.state.images_settings = ImagesSettings()
    return settings


ImagesSettingsDep = Annotated[ImagesSettings, Depends(get_images_settings)]


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    responses=ERROR_RESPONSES,
    response_model_exclude_none=True,
    operation_id="create_image",
    summary="Generate images (OpenAI-compatible)",
)
async def create_image(
    body: ImageGenerationRequest, images: ImagesSettingsDep, generations: GenerationsDep, request: Request
) -> ImagesResponse:
    """Plan a canvas from the prompt, render ``n`` images of it and wait for them."""
    return await create_images(body, images, generations, request)


@router.get("/models", response_model=ModelList, responses={k: ERROR_RESPONSES[k] for k in (401, 500)},
            operation_id="list_models")
async def list_models(queue: QueueDep) -> ModelList:
    """The model(s) ``POST /v1/images/generations`` serves (OpenAI's list shape): ``omost`` (the render
    service's default model) and every other model the render workers registered."""
    served = [m for m in await queue.models() if m.name != DEFAULT_MODEL]
    models = [Model(id=MODEL_ID, created=0, owned_by="omost-service")]
    models += [Model(id=m.name, created=int(m.last_seen), owned_by="omost-service") for m in served]
    return ModelList(data=models)
