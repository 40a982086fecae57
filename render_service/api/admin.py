"""``/v1/admin/*``: what the open probes no longer show, for the holder of the admin token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from render_service.api.deps import HubDep, SettingsDep, StoreDep
from shared.service.auth import require_admin
from shared.service.routing import StrictRoute

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)], route_class=StrictRoute)


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
