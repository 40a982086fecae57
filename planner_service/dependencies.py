"""FastAPI dependencies: the app's settings and clients (built once in the lifespan), and auth."""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from planner_service.conversations import ConversationStore
from planner_service.metrics import PlannerMetrics
from planner_service.planning import Planner
from planner_service.settings import PlannerSettings

_bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> PlannerSettings:
    return request.app.state.settings


def get_planner(request: Request) -> Planner:
    return request.app.state.planner


def get_store(request: Request) -> ConversationStore:
    return request.app.state.store


def get_metrics(request: Request) -> PlannerMetrics:
    return request.app.state.metrics


def require_token(
    settings: PlannerSettings = Depends(get_settings),
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """With ``OMOST_PLANNER_API_TOKEN`` set, /v1/* needs ``Authorization: Bearer <token>``."""
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value()
    given = credentials.credentials if credentials else ""
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
