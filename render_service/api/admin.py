"""``/v1/admin/*``: what the open probes no longer show, for the holder of the admin token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from render_service.api.deps import HubDep, QueueDep, SettingsDep, StoreDep
from shared.service.auth import registry, require_admin
from shared.service.routing import StrictRoute

router = APIRouter(
    prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)], route_class=StrictRoute
)


class WorkerView(BaseModel):
    """A live worker as it describes itself in its heartbeat (name, host, pid, model, device,
    current job...); the fields are the worker's, so they are passed through as they are."""

    name: str
    details: dict[str, Any] = Field(default_factory=dict)


class WorkersView(BaseModel):
    workers: list[WorkerView]
    open_event_streams: int = Field(description="SSE streams open on all API replicas together.")


@router.get(
    "/workers",
    response_model=WorkersView,
    responses={401: {"description": "Missing or wrong admin token."}, 403: {"description": "No admin token set."}},
)
async def workers(settings: SettingsDep, store: StoreDep, hub: HubDep) -> WorkersView:
    """Workers with a recent heartbeat and what they report about themselves."""
    live = await store.live_workers(3 * settings.heartbeat_interval)
    views = [WorkerView(name=w.pop("name"), details=w) for w in live]
    return WorkersView(workers=views, open_event_streams=await hub.open_streams())


class TokenUsage(BaseModel):
    """A named token's use of its quotas (the token file's names; the secrets are never shown)."""

    name: str
    megapixel_steps_last_hour: float = Field(description="Work it queued in the last hour, as its quota counts it.")
    megapixel_steps_per_hour: float | None = Field(description="Its quota; null: none.")
    jobs_active: int = Field(description="Its jobs queued or running, as its quota counts them.")
    max_concurrent_jobs: int | None = Field(description="Its quota; null: none.")


class UsageView(BaseModel):
    tokens: list[TokenUsage]


@router.get(
    "/usage",
    response_model=UsageView,
    responses={401: {"description": "Missing or wrong admin token."}, 403: {"description": "No admin token set."}},
)
async def usage(request: Request, queue: QueueDep) -> UsageView:
    """Each named token of ``OMOST_RENDER_API_TOKENS_FILE`` and its quotas' use, counted in Redis for all
    replicas (and for the planner's ``/v1/generations``, which submits under the same names)."""
    views = []
    for who in registry(request).named():
        assert who.name is not None and who.quota is not None
        work, active = await queue.usage(who.owner)
        views.append(
            TokenUsage(
                name=who.name,
                megapixel_steps_last_hour=round(work, 3),
                megapixel_steps_per_hour=who.quota.megapixel_steps_per_hour,
                jobs_active=active,
                max_concurrent_jobs=who.quota.max_concurrent_jobs,
            )
        )
    return UsageView(tokens=views)
