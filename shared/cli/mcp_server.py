"""The Model Context Protocol server behind ``omost mcp``: the service's tools for an agent.

It reaches the running services only over HTTP through the typed client (never by import), with the
same bearer token as the rest of the CLI. Canvases come back as structured output (their JSON schema
is the tool's output schema); finished images come back as MCP image content; a render that is
waited for reports each sampling step as an MCP progress notification.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, cast

import anyio
import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp_types import CallToolResult, ContentBlock, ImageContent, InputRequiredResult, TextContent
from pydantic import BaseModel, Field, ValidationError

from shared.canvas import Canvas
from shared.cli.errors import field_error
from shared.cli.mcp_http import HTTPExposure, serve_http
from shared.client import AsyncOmostClient, OmostAPIError, RenderFailed
from shared.contract import RENDER_DEFAULTS
from shared.jobs import MAX_IMAGES, MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE, RenderJob, RenderRequest
from shared.plans import MAX_PROMPT_CHARS

INSTRUCTIONS = (
    "Omost plans an image as a canvas (a global description plus placed regions) with an LLM, then "
    "renders it with regional attention. Use `generate` for prompt -> image; `plan` and `edit_plan` to "
    "work on the canvas first, then `render` and `get_render`."
)


@dataclass(frozen=True)
class MCPConfig:
    planner_url: str
    render_url: str
    token: str | None = None
    render_timeout: float = 900.0
    http_timeout: float = 600.0


# --- Tool inputs and outputs (their JSON schemas are what the agent sees) --------------------------

Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw.")]
Width = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8, description="Image width (multiple of 8).")]
Height = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8, description="Image height (multiple of 8).")]
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS, description="Sampling steps.")]
Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED, description="Image i uses seed + i; null: random.")]
Images = Annotated[int, Field(ge=1, le=MAX_IMAGES, description="How many images.")]
PlanTokens = Annotated[int | None, Field(ge=16, le=32768, description="Cap on the plan's length in tokens.")]


class PlanOutput(BaseModel):
    canvas: Canvas = Field(description="The planned canvas (Omost's fields).")
    code: str = Field(description="The same canvas as Omost code.")
    conversation_id: str | None = Field(default=None, description="Pass to edit_plan to continue.")


class JobOutput(BaseModel):
    id: str
    status: str
    progress: str | None = Field(default=None, description="'step/total' while sampling.")
    error: str | None = None
    seeds: list[int] = []
    url: str = Field(description="The job's status URL on the render API.")
    image_urls: list[str] = []


class GenerateOutput(BaseModel):
    canvas: Canvas
    code: str
    conversation_id: str | None = None
    job: JobOutput


def job_output(job: RenderJob) -> JobOutput:
    progress = f"{job.progress.step}/{job.progress.total}" if job.progress else None
    return JobOutput(id=job.id, status=job.status, progress=progress, error=job.error, seeds=job.seeds,
                     url=job.urls.self_, image_urls=job.urls.images)


FAILURES = (OmostAPIError, RenderFailed, httpx.HTTPError, OSError, TimeoutError)
"""What a tool call can meet out there; each becomes a tool error the agent reads, not a crash."""


def _tool_error(exc: Exception) -> ToolError:
    if isinstance(exc, OmostAPIError):
        return ToolError(f"the service answered {exc.status_code}: {exc.detail}")
    if isinstance(exc, httpx.RequestError):
        return ToolError(f"cannot reach {exc.request.url}: {exc}")
    return ToolError(str(exc) or type(exc).__name__)


async def _images(client: AsyncOmostClient, job: RenderJob) -> list[ContentBlock]:
    blocks: list[ContentBlock] = []
    for index in range(len(job.urls.images)):
        png = await client.image(job, index)
        blocks.append(ImageContent(type="image", data=base64.b64encode(png).decode("ascii"), mime_type="image/png"))
    return blocks


async def _wait(client: AsyncOmostClient, job_id: str, ctx: Context, timeout: float) -> RenderJob:
    """Follow the job's event stream, turning each sampling step into a progress notification."""
    with anyio.fail_after(timeout):
        async for event in client.events(job_id):
            if event.type == "progress" and event.step is not None:
                await ctx.report_progress(event.step, event.total, f"step {event.step}/{event.total}")
    job = await client.get(job_id)
    if job.status != "succeeded":
        raise RenderFailed(job)
    return job


class OmostMCPServer(MCPServer):
    """The SDK's server, with bad arguments told as the HTTP API tells them: one line per problem
    (``width must be a multiple of 8 (got 63)``), never pydantic's multi-line text with
    ``input_value=...`` and a documentation link."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if not isinstance(cause, ValidationError) or isinstance(exc, UnexpectedToolError):
                raise
            lines = [f"invalid argument {field_error(e)}" for e in cause.errors(include_url=False)]
            raise ToolError("\n".join(lines)) from cause


def build_server(config: MCPConfig) -> MCPServer:
    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[AsyncOmostClient]:
        async with AsyncOmostClient(
            config.planner_url, config.render_url, token=config.token, timeout=config.http_timeout
        ) as client:
            yield client

    server: MCPServer = OmostMCPServer("omost", instructions=INSTRUCTIONS, lifespan=lifespan)

    def client_of(ctx: Context) -> AsyncOmostClient:
        return cast(AsyncOmostClient, ctx.request_context.lifespan_context)

    @server.tool()
    async def plan(prompt: Prompt, ctx: Context, seed: Seed = None, max_new_tokens: PlanTokens = None) -> PlanOutput:
        """Plan PROMPT into a canvas: a global description plus placed, coloured regions."""
        try:
            result = await client_of(ctx).plan(prompt, seed=seed, max_new_tokens=max_new_tokens)
        except FAILURES as exc:
            raise _tool_error(exc) from None
        return PlanOutput(canvas=result.canvas, code=result.code, conversation_id=result.conversation_id)

    @server.tool()
    async def edit_plan(
        instruction: Prompt,
        ctx: Context,
        conversation_id: str | None = None,
        canvas: Canvas | None = None,
        seed: Seed = None,
        max_new_tokens: PlanTokens = None,
    ) -> PlanOutput:
        """Change a canvas in words ("make the dog a corgi"): give the conversation_id of an earlier plan,
        or the canvas itself."""
        if (conversation_id is None) == (canvas is None):
            raise ToolError("give exactly one of conversation_id (from plan) or canvas")
        try:
            result = await client_of(ctx).plan(
                instruction, conversation_id=conversation_id, canvas=canvas, seed=seed, max_new_tokens=max_new_tokens
            )
        except FAILURES as exc:
            raise _tool_error(exc) from None
        return PlanOutput(canvas=result.canvas, code=result.code, conversation_id=result.conversation_id)

    @server.tool()
    async def render(
        canvas: Canvas,
        ctx: Context,
        width: Width = RENDER_DEFAULTS["width"],
        height: Height = RENDER_DEFAULTS["height"],
        steps: Steps = RENDER_DEFAULTS["steps"],
        seed: Seed = None,
        num_images: Images = 1,
    ) -> JobOutput:
        """Queue a render of CANVAS; returns the job at once (follow it with get_render)."""
        request = RenderRequest(canvas=canvas, width=width, height=height, steps=steps, seed=seed,
                                num_images=num_images)
        try:
            client = client_of(ctx)
            accepted = await client.submit(request)
            return job_output(await client.get(accepted.urls.self_))
        except FAILURES as exc:
            raise _tool_error(exc) from None

    @server.tool()
    async def get_render(
        job_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")], ctx: Context, wait: bool = False
    ) -> Annotated[CallToolResult, JobOutput]:
        """Status and progress of a render job; its images once it has succeeded. With wait=true, wait
        for the end, reporting progress."""
        client = client_of(ctx)
        try:
            job = await _wait(client, job_id, ctx, config.render_timeout) if wait else await client.get(job_id)
            images = await _images(client, job) if job.status == "succeeded" else []
        except RenderFailed as exc:
            job, images = exc.job, []
        except FAILURES as exc:
            raise _tool_error(exc) from None
        output = job_output(job)
        text = TextContent(type="text", text=output.model_dump_json())
        return CallToolResult(content=[*images, text], structured_content=output.model_dump(mode="json"))

    @server.tool()
    async def generate(
        prompt: Prompt,
        ctx: Context,
        width: Width = RENDER_DEFAULTS["width"],
        height: Height = RENDER_DEFAULTS["height"],
        steps: Steps = RENDER_DEFAULTS["steps"],
        seed: Seed = None,
        num_images: Images = 1,
        max_new_tokens: PlanTokens = None,
    ) -> Annotated[CallToolResult, GenerateOutput]:
        """Prompt to image(s): plan a canvas, render it and return the images (progress is reported)."""
        client = client_of(ctx)
        render_options: dict[str, Any] = {
            "width": width, "height": height, "steps": steps, "seed": seed, "num_images": num_images,
        }
        try:
            accepted = await client.generate(prompt, render=render_options, max_new_tokens=max_new_tokens)
            job = await _wait(client, accepted.id, ctx, config.render_timeout)
            images = await _images(client, job)
        except FAILURES as exc:
            raise _tool_error(exc) from None
        output = GenerateOutput(canvas=accepted.canvas, code=accepted.code,
                                conversation_id=accepted.conversation_id, job=job_output(job))
        text = TextContent(type="text", text=accepted.canvas.global_description.description)
        return CallToolResult(content=[*images, text], structured_content=output.model_dump(mode="json"))

    return server


def run(config: MCPConfig, *, exposure: HTTPExposure | None = None) -> None:
    """Serve over stdio, or over streamable HTTP as ``exposure`` allows (its token, its allowed hosts)."""
    server = build_server(config)
    if exposure is not None:
        serve_http(server, exposure)
    else:
        server.run("stdio")
