"""``GET /v1/models``: the models the running workers serve, from their registrations in Redis."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from render_service.api.deps import QueueDep
from shared.jobs import DEFAULT_MODEL
from shared.models import ModelList
from shared.service.auth import require_token
from shared.service.routing import StrictRoute

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(require_token)], route_class=StrictRoute)


@router.get("", response_model=ModelList, responses={401: {"description": "Missing or wrong bearer token."}})
async def list_models(queue: QueueDep) -> ModelList:
    """Each model a worker registered within its TTL: family, defaults, size multiple, samplers and
    options it takes, and how many live workers serve it. A render request names one in `model`;
    without it the request goes to `default`."""
    return ModelList(default=DEFAULT_MODEL, models=await queue.models())
