"""What each MCP tool does, over HTTP through the typed client (never by import). Failures are the
client's own exceptions (and :class:`BadArguments`); ``shared.cli.mcp_server`` maps them all, in one
place, to the tool errors the agent reads."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from mcp_types import ContentBlock, ImageContent

from shared.canvas import Canvas
from shared.cli.mcp_protocol import GenerateOutput, JobOutput, PlanOutput
from shared.client import AsyncOmostClient, RenderFailed
from shared.jobs import RenderJob, RenderRequest, SamplingParams
from shared.plans import PlanResult

ReportProgress = Callable[[int, int | None, str], Awaitable[None]]
"""``(step, total, message)``: an MCP progress notification."""


class BadArguments(ValueError):
    """Arguments each valid alone that do not go together."""


@dataclass(frozen=True)
class Finished:
    """A job with its images (none unless it succeeded)."""

    job: RenderJob
    images: list[ContentBlock]


def _plan_output(result: PlanResult) -> PlanOutput:
    return PlanOutput(canvas=result.canvas, code=result.code, conversation_id=result.conversation_id)


@dataclass(frozen=True)
class OmostTools:
    client: AsyncOmostClient
    render_timeout: float

    async def plan(self, prompt: str, *, seed: int | None, max_new_tokens: int | None) -> PlanOutput:
        return _plan_output(await self.client.plan(prompt, seed=seed, max_new_tokens=max_new_tokens))

    async def edit_plan(
        self, instruction: str, *, conversation_id: str | None, canvas: Canvas | None, seed: int | None,
        max_new_tokens: int | None,
    ) -> PlanOutput:
        if (conversation_id is None) == (canvas is None):
            raise BadArguments("give exactly one of conversation_id (from plan) or canvas")
        result = await self.client.plan(
            instruction, conversation_id=conversation_id, canvas=canvas, seed=seed, max_new_tokens=max_new_tokens
        )
        return _plan_output(result)

    async def render(self, request: RenderRequest) -> JobOutput:
        """Queue ``request``; the job as it stands right after."""
        accepted = await self.client.submit(request)
        return JobOutput.of(await self.client.get(accepted.urls.self_))

    async def get_render(self, job_id: str, *, wait: bool, report: ReportProgress) -> Finished:
        try:
            job = await self._wait(job_id, report) if wait else await self.client.get(job_id)
        except RenderFailed as exc:
            return Finished(exc.job, [])
        return Finished(job, await self._images(job) if job.status == "succeeded" else [])

    async def generate(
        self, prompt: str, sampling: SamplingParams, *, max_new_tokens: int | None, report: ReportProgress
    ) -> tuple[GenerateOutput, list[ContentBlock]]:
        """Plan, render and wait: the output and the images (a failed render raises ``RenderFailed``)."""
        accepted = await self.client.generate(prompt, render=sampling, max_new_tokens=max_new_tokens)
        job = await self._wait(accepted.id, report)
        output = GenerateOutput(canvas=accepted.canvas, code=accepted.code,
                                conversation_id=accepted.conversation_id, job=JobOutput.of(job))
        return output, await self._images(job)

    async def _images(self, job: RenderJob) -> list[ContentBlock]:
        blocks: list[ContentBlock] = []
        for index in range(len(job.urls.images)):
            png = await self.client.image(job, index)
            blocks.append(ImageContent(type="image", data=base64.b64encode(png).decode("ascii"), mime_type="image/png"))
        return blocks

    async def _wait(self, job_id: str, report: ReportProgress) -> RenderJob:
        """Follow the job's event stream, turning each sampling step into a progress notification."""
        with anyio.fail_after(self.render_timeout):
            async for event in self.client.events(job_id):
                if event.type == "progress" and event.step is not None:
                    await report(event.step, event.total, f"step {event.step}/{event.total}")
        job = await self.client.get(job_id)
        if job.status != "succeeded":
            raise RenderFailed(job)
        return job
