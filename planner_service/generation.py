"""Plan, then queue the render: what ``POST /v1/generations`` does, and the first half of
``POST /v1/images/generations``. The routers bind it to HTTP."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from redis.exceptions import RedisError

from planner_service.admission import Admission, unless_disconnected
from planner_service.conversations import StoreUnavailable
from planner_service.service import PlanService
from planner_service.settings import PlannerSettings
from shared.jobs import RenderRequest, SamplingParams
from shared.plans import GenerationAccepted, GenerationRequest
from shared.queue import RenderQueue, job_urls
from shared.service.auth import caller, identity
from shared.service.submission import check_budget, check_quota, fit_model, submit_render

RENDER_LOC = ("body", "render")
"""Where a refused render parameter sits in a 422's ``loc``."""


@dataclass(frozen=True)
class Generations:
    """What a generation needs of the app, gathered by the route from its providers."""

    service: PlanService
    settings: PlannerSettings
    queue: RenderQueue
    admission: Admission

    async def generate(self, body: GenerationRequest, request: Request) -> GenerationAccepted:
        """Plan ``body``'s prompt and queue the render of its canvas in the token's name (202's body)."""
        # (``body.render`` was validated with the body, strictly, by the route class.) A job over
        # budget, for a model nobody serves (or one that cannot take these options), against a full
        # queue or a used-up quota should not cost a plan: refuse it first.
        fitted = await fit_model(self.queue, body.render, loc=RENDER_LOC)
        check_budget(self.queue, fitted, loc=RENDER_LOC)
        await self._check_queue_room(fitted, request)
        slot = await self.admission.admit()
        try:
            # A client that hangs up stops the plan and never gets a render queued in its name.
            return await unless_disconnected(request, self._plan_and_queue(body, request))
        finally:
            await slot.release()

    async def _check_queue_room(self, render: SamplingParams, request: Request) -> None:
        """429 now (with Retry-After) when the model's render queue is full or the token's quota used up."""
        who = identity(request)
        try:
            await self.queue.check_depth(render.model)
            await check_quota(self.queue, render, submitter=who.owner, quota=who.quota)
        except RedisError as exc:
            raise StoreUnavailable(f"the render queue (Redis) is unavailable: {exc}") from exc

    async def _plan_and_queue(self, body: GenerationRequest, request: Request) -> GenerationAccepted:
        plan = await self.service.plan(body.model_copy(update={"stream": False}), caller(request))
        render_request = RenderRequest.of(plan.canvas, body.render)
        try:
            # The job is the token's, as if submitted to the render API with it.
            who = identity(request)
            job_id, _ = await submit_render(
                self.queue, render_request, submitter=who.owner, quota=who.quota, loc=RENDER_LOC
            )
        except RedisError as exc:
            raise StoreUnavailable(f"the render queue (Redis) is unavailable: {exc}") from exc
        return GenerationAccepted(
            id=job_id,
            status="queued",
            canvas=plan.canvas,
            code=plan.code,
            conversation_id=plan.conversation_id,
            urls=job_urls(job_id, render_request.num_images, self.settings.render_api_url),
        )
