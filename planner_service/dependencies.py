"""FastAPI dependencies as ``Annotated`` aliases: the app's settings and what the lifespan built, each
read from ``app.state`` as its type (:func:`shared.service.state.app_state`).
(The bearer token check is shared with the render API: :mod:`shared.service.auth`.)"""

from __future__ import annotations

from typing import Annotated

import redis.asyncio
from fastapi import Depends, Request

from planner_service.admission import AdmissionDep
from planner_service.conversations import ConversationStore
from planner_service.generation import Generations
from planner_service.llm.client import OpenAIClient
from planner_service.metrics import PlannerMetrics
from planner_service.service import PlanService
from planner_service.settings import PlannerSettings
from shared.queue import RenderQueue
from shared.service.state import app_state


def get_settings(request: Request) -> PlannerSettings:
    return app_state(request, "settings", PlannerSettings)


def get_redis(request: Request) -> redis.asyncio.Redis:
    return app_state(request, "redis", redis.asyncio.Redis)


def get_queue(request: Request) -> RenderQueue:
    return app_state(request, "queue", RenderQueue)


def get_store(request: Request) -> ConversationStore:
    return app_state(request, "store", ConversationStore)


def get_plan_service(request: Request) -> PlanService:
    return app_state(request, "plan_service", PlanService)


def get_llm(request: Request) -> OpenAIClient:
    return app_state(request, "llm", OpenAIClient)


def get_metrics(request: Request) -> PlannerMetrics:
    return app_state(request, "metrics", PlannerMetrics)


SettingsDep = Annotated[PlannerSettings, Depends(get_settings)]
RedisDep = Annotated[redis.asyncio.Redis, Depends(get_redis)]
QueueDep = Annotated[RenderQueue, Depends(get_queue)]
StoreDep = Annotated[ConversationStore, Depends(get_store)]
PlanServiceDep = Annotated[PlanService, Depends(get_plan_service)]
LLMDep = Annotated[OpenAIClient, Depends(get_llm)]
MetricsDep = Annotated[PlannerMetrics, Depends(get_metrics)]


def get_generations(
    service: PlanServiceDep, settings: SettingsDep, queue: QueueDep, admission: AdmissionDep
) -> Generations:
    return Generations(service, settings, queue, admission)


GenerationsDep = Annotated[Generations, Depends(get_generations)]

