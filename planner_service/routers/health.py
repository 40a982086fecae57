"""``/healthz`` (the process answers), ``/readyz`` (the LLM and Redis answer), ``/metrics``."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from planner_service.dependencies import LLMDep, MetricsDep, RedisDep
from planner_service.llm.client import LLMUnavailable, OpenAIClient

log = logging.getLogger("planner_service")

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
    # Status only: the probe is open to anyone, so addresses and messages go to the log.
    checks = await _probe(llm, redis_client)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", **checks}, status_code=200 if ready else 503)


async def _probe(llm: OpenAIClient, redis_client: Redis) -> dict[str, str]:
    """Ask the LLM for its models and Redis for a PING: ``{"llm": ..., "redis": ...}``, "ok" when each answers."""
    checks: dict[str, str] = {}
    try:
        models = await asyncio.wait_for(llm.models(), PROBE_TIMEOUT_SECONDS)
        checks["llm"] = "ok" if models else "no models served"
    except Exception as exc:  # any failure means "not ready"
        log.warning("probe: LLM not ready: %s: %s", type(exc).__name__, exc)
        checks["llm"] = "unreachable" if isinstance(exc, LLMUnavailable | TimeoutError) else "error"
    try:
        await asyncio.wait_for(redis_client.ping(), PROBE_TIMEOUT_SECONDS)
        checks["redis"] = "ok"
    except Exception as exc:
        log.warning("probe: Redis not ready: %s: %s", type(exc).__name__, exc)
        checks["redis"] = "unreachable"
    return checks


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(planner_metrics: MetricsDep, llm: LLMDep, redis_client: RedisDep) -> Response:
    # The same probe as /readyz, so an alert can tell "the LLM is down" from "the planner is down".
    checks = await _probe(llm, redis_client)
    planner_metrics.llm_up.set(checks["llm"] == "ok")
    planner_metrics.redis_up.set(checks["redis"] == "ok")
    return Response(generate_latest(planner_metrics.registry), media_type=CONTENT_TYPE_LATEST)
