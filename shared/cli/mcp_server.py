"""The Model Context Protocol server behind ``omost mcp``: the service's tools for an agent.

Split as vLLM splits an endpoint: the tools' inputs and outputs are :mod:`shared.cli.mcp_protocol`,
what each does is :mod:`shared.cli.mcp_serving`, and this module binds them to MCP tools and maps
every failure to a tool error, in one place (:meth:`OmostMCPServer.call_tool`). Canvases come back as
structured output (their JSON schema is the tool's output schema); finished images come back as MCP
image content; a render that is waited for reports each sampling step as an MCP progress notification.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, cast

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp_types import CallToolResult, InputRequiredResult, TextContent
from pydantic import BaseModel, ValidationError

from shared.canvas import Canvas
from shared.cli.errors import field_error
from shared.cli.mcp_http import HTTPExposure, serve_http
from shared.cli.mcp_protocol import (
    GenerateOutput,
    Height,
    Images,
    JobId,
    JobOutput,
    ModelName,
    PlanOutput,
    PlanTokens,
    Prompt,
    Seed,
    Steps,
    Width,
)
from shared.cli.mcp_serving import BadArguments, OmostTools, ReportProgress
from shared.client import AsyncOmostClient, OmostAPIError, RenderFailed
from shared.contract import RENDER_DEFAULTS
from shared.jobs import RenderRequest, SamplingParams

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


FAILURES = (OmostAPIError, RenderFailed, httpx.HTTPError, OSError, TimeoutError, BadArguments)
"""What a tool call can meet out there (or arguments that do not go together); each becomes a tool
error the agent reads, not a crash."""


def _failure_text(exc: Exception) -> str:
    if isinstance(exc, OmostAPIError):
        return f"the service answered {exc.status_code}: {exc.detail}"
    if isinstance(exc, httpx.RequestError):
        return f"cannot reach {exc.request.url}: {exc}"
    return str(exc) or type(exc).__name__


def tool_error(name: str, exc: ToolError) -> ToolError:
    """The one error mapping: bad arguments as the HTTP API tells them, one line per problem
    (``width must be a multiple of 8 (got 63)``, never pydantic's multi-line text with
    ``input_value=...``); a failure out there as what happened; anything else (a bug) as the SDK words it."""
    cause = exc.__cause__
    if isinstance(cause, ValidationError) and not isinstance(exc, UnexpectedToolError):
        return ToolError("\n".join(f"invalid argument {field_error(e)}" for e in cause.errors(include_url=False)))
    if isinstance(cause, FAILURES):
        return ToolError(f"Error executing tool {name}: {_failure_text(cause)}")
    return exc


class OmostMCPServer(MCPServer):
    """The SDK's server, with every failure of a tool mapped by :func:`tool_error`."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            mapped = tool_error(name, exc)
            if mapped is exc:
                raise
            raise mapped from exc.__cause__


def _with_images(output: BaseModel, images: list[Any], text: str) -> CallToolResult:
    return CallToolResult(content=[*images, TextContent(type="text", text=text)],
                          structured_content=output.model_dump(mode="json"))


def build_server(config: MCPConfig) -> MCPServer:
    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[OmostTools]:
        async with AsyncOmostClient(
            config.planner_url, config.render_url, token=config.token, timeout=config.http_timeout
        ) as client:
            yield OmostTools(client, config.render_timeout)

    server: MCPServer = OmostMCPServer("omost", instructions=INSTRUCTIONS, lifespan=lifespan)

    def tools(ctx: Context) -> OmostTools:
        return cast(OmostTools, ctx.request_context.lifespan_context)

    def progress(ctx: Context) -> ReportProgress:
        return ctx.report_progress

    @server.tool()
    async def plan(prompt: Prompt, ctx: Context, seed: Seed = None, max_new_tokens: PlanTokens = None) -> PlanOutput:
        """Plan PROMPT into a canvas: a global description plus placed, coloured regions."""
        return await tools(ctx).plan(prompt, seed=seed, max_new_tokens=max_new_tokens)

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
        return await tools(ctx).edit_plan(
            instruction, conversation_id=conversation_id, canvas=canvas, seed=seed, max_new_tokens=max_new_tokens
        )

    @server.tool()
    async def render(
        canvas: Canvas,
        ctx: Context,
        width: Width = RENDER_DEFAULTS["width"],
        height: Height = RENDER_DEFAULTS["height"],
        steps: Steps = None,
        seed: Seed = None,
        num_images: Images = 1,
        model: ModelName = None,
    ) -> JobOutput:
        """Queue a render of CANVAS; returns the job at once (follow it with get_render)."""
        sampling = _sampling(width, height, steps, seed, num_images, model)
        return await tools(ctx).render(RenderRequest.of(canvas, sampling))

    @server.tool()
    async def get_render(job_id: JobId, ctx: Context, wait: bool = False) -> Annotated[CallToolResult, JobOutput]:
        """Status and progress of a render job; its images once it has succeeded. With wait=true, wait
        for the end, reporting progress."""
        finished = await tools(ctx).get_render(job_id, wait=wait, report=progress(ctx))
        output = JobOutput.of(finished.job)
        return _with_images(output, finished.images, output.model_dump_json())

    @server.tool()
    async def generate(
        prompt: Prompt,
        ctx: Context,
        width: Width = RENDER_DEFAULTS["width"],
        height: Height = RENDER_DEFAULTS["height"],
        steps: Steps = None,
        seed: Seed = None,
        num_images: Images = 1,
        max_new_tokens: PlanTokens = None,
        model: ModelName = None,
    ) -> Annotated[CallToolResult, GenerateOutput]:
        """Prompt to image(s): plan a canvas, render it and return the images (progress is reported)."""
        sampling = _sampling(width, height, steps, seed, num_images, model)
        output, images = await tools(ctx).generate(
            prompt, sampling, max_new_tokens=max_new_tokens, report=progress(ctx)
        )
        return _with_images(output, images, output.canvas.global_description.description)

    return server


def _sampling(
    width: int, height: int, steps: int | None, seed: int | None, num_images: int, model: str | None
) -> SamplingParams:
    """The tool's sampling arguments; steps and model only when given, so the served model's defaults apply."""
    optional = {name: value for name, value in (("steps", steps), ("model", model)) if value is not None}
    return SamplingParams(width=width, height=height, seed=seed, num_images=num_images, **optional)


def run(config: MCPConfig, *, exposure: HTTPExposure | None = None) -> None:
    """Serve over stdio, or over streamable HTTP as ``exposure`` allows (its token, its allowed hosts)."""
    server = build_server(config)
    if exposure is not None:
        serve_http(server, exposure)
    else:
        server.run("stdio")
