"""``/healthz`` (the process answers), ``/readyz`` (the LLM and Redis answer), ``/metrics``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from planner_service.dependencies import LLMDep, MetricsDep, RedisDep

router = APIRouter(tags=["operations"])

PROBE_TIMEOUT_SECONDS = 5.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


_REPORT = {"application/json": {"schema": {"type": "object", "additionalProperties": True}}}


@router.get(
    "/readyz",
    responses={503: {"description": "The LLM or Redis does not answer; the body says which.", "content": _REPORT}},
)
async def readyz(llm: LLMDep, redis_client: RedisDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        models = await asyncio.wait_for(llm.models(), PROBE_TIMEOUT_SECONDS)
        checks["llm"] = "ok" if models else "no models served"
    except Exception as exc:  # any failure means "not ready"; the message says which
        checks["llm"] = f"{type(exc).__name__}: {exc}"
    try:
        await asyncio.wait_for(redis_client.ping(), PROBE_TIMEOUT_SECONDS)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"{type(exc).__name__}: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", **checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(planner_metrics: MetricsDep) -> Response:
    return Response(generate_latest(planner_metrics.registry), media_type=CONTENT_TYPE_LATEST)
