"""FastAPI dependencies as ``Annotated`` aliases: the app's settings and what the lifespan built.
(The bearer token check is shared with the render API: :mod:`shared.service.auth`.)"""

from __future__ import annotations

from typing import Annotated

import redis.asyncio
from fastapi import Depends, Request

from planner_service.conversations import ConversationStore
from planner_service.llm.client import OpenAIClient
from planner_service.metrics import PlannerMetrics
from planner_service.service import PlanService
from planner_service.settings import PlannerSettings
from shared.queue import RenderQueue


def get_settings(request: Request) -> PlannerSettings:
    return request.app.state.settings


def get_redis(request: Request) -> redis.asyncio.Redis:
    return request.app.state.redis


def get_queue(request: Request) -> RenderQueue:
    return request.app.state.queue


def get_store(request: Request) -> ConversationStore:
    return request.app.state.store


def get_plan_service(request: Request) -> PlanService:
    return request.app.state.plan_service


def get_llm(request: Request) -> OpenAIClient:
    return request.app.state.llm


def get_metrics(request: Request) -> PlannerMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[PlannerSettings, Depends(get_settings)]
RedisDep = Annotated[redis.asyncio.Redis, Depends(get_redis)]
QueueDep = Annotated[RenderQueue, Depends(get_queue)]
StoreDep = Annotated[ConversationStore, Depends(get_store)]
PlanServiceDep = Annotated[PlanService, Depends(get_plan_service)]
LLMDep = Annotated[OpenAIClient, Depends(get_llm)]
MetricsDep = Annotated[PlannerMetrics, Depends(get_metrics)]
