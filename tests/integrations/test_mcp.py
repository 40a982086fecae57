"""``omost mcp`` over stdio, driven by the official MCP SDK's client as an agent host would, against
the real stack. The server is a separate process that reaches the services only over HTTP."""

from __future__ import annotations

import base64
import io
import os
import sys
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import ImageContent
from PIL import Image

from shared.canvas import Canvas
from shared.cli.stack import LocalStack
from tests.integrations.conftest import PLAN_TOKENS, TOKEN

# Each image is a real plan by SmolLM2 on the CPU first: tens of seconds.
pytestmark = pytest.mark.slow


def server(stack: LocalStack, token: str = TOKEN) -> StdioServerParameters:
    env = {**os.environ, "OMOST_API_TOKEN": token}
    args = ["-m", "shared.cli", "mcp", "--url", stack.planner_url, "--render-url", stack.render_url]
    return StdioServerParameters(command=sys.executable, args=args, env=env)


def call(stack: LocalStack, calls: list[tuple[str, dict[str, Any]]], token: str = TOKEN) -> tuple[list, list]:
    """Run the tool calls in one session; returns their results and the progress notifications seen."""
    progress: list[tuple[float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))

    async def session() -> list:
        async with Client(server(stack, token)) as client:
            return [await client.call_tool(name, arguments, progress_callback=on_progress, read_timeout_seconds=300)
                    for name, arguments in calls]

    return anyio.run(session), progress


def test_lists_the_tools_with_schemas(stack: LocalStack) -> None:
    async def tools() -> list:
        async with Client(server(stack)) as client:
            return (await client.list_tools()).tools

    listed = {tool.name: tool for tool in anyio.run(tools)}
    assert set(listed) == {"plan", "edit_plan", "render", "generate", "get_render"}
    canvas_schema = listed["plan"].output_schema
    assert canvas_schema is not None and "canvas" in canvas_schema["properties"]
    assert "prompt" in listed["generate"].input_schema["required"]


def test_generate_returns_an_image_and_reports_progress(stack: LocalStack) -> None:
    arguments = {"prompt": "a red ball on grass", "width": 64, "height": 96, "steps": 4, "seed": 3,
                 "max_new_tokens": int(PLAN_TOKENS)}
    (result,), progress = call(stack, [("generate", arguments)])
    assert not result.is_error, result.content
    images = [block for block in result.content if isinstance(block, ImageContent)]
    assert len(images) == 1
    assert images[0].mime_type == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(images[0].data))).size == (64, 96)
    structured = result.structured_content
    assert structured["job"]["status"] == "succeeded"
    Canvas.model_validate(structured["canvas"])
    assert progress and progress[-1] == (4, 4)


def test_plan_then_edit_by_conversation_and_by_canvas(stack: LocalStack) -> None:
    tokens = int(PLAN_TOKENS)
    (planned,), _ = call(stack, [("plan", {"prompt": "a dog in a park", "seed": 1, "max_new_tokens": tokens})])
    assert not planned.is_error, planned.content
    first = planned.structured_content
    Canvas.model_validate(first["canvas"])
    edits = [
        ("edit_plan", {"instruction": "make it night", "conversation_id": first["conversation_id"], "seed": 2,
                       "max_new_tokens": tokens}),
        ("edit_plan", {"instruction": "add a moon", "canvas": first["canvas"], "seed": 3, "max_new_tokens": tokens}),
    ]
    results, _ = call(stack, edits)
    for result in results:
        assert not result.is_error, result.content
        Canvas.model_validate(result.structured_content["canvas"])
    assert results[0].structured_content["conversation_id"] == first["conversation_id"]


def test_render_then_get_render_waits_for_the_images(stack: LocalStack) -> None:
    canvas = {"global_description": {"description": "a quiet lake", "HTML_web_color_name": "skyblue"}}
    (queued,), _ = call(stack, [("render", {"canvas": canvas, "width": 64, "height": 64, "steps": 2, "seed": 9})])
    assert not queued.is_error, queued.content
    job_id = queued.structured_content["id"]
    (done,), progress = call(stack, [("get_render", {"job_id": job_id, "wait": True})])
    assert done.structured_content["status"] == "succeeded"
    assert [b for b in done.content if isinstance(b, ImageContent)]
    assert progress  # the event history replays every step, even of a job already done


@pytest.mark.parametrize(
    ("name", "arguments", "says"),
    [
        ("generate", {"prompt": "a cat", "width": 63}, "multiple of 8"),
        ("generate", {}, "prompt"),
        ("edit_plan", {"instruction": "bluer"}, "exactly one of"),
        ("render", {"canvas": {"global_description": {"description": "x"}}}, "HTML_web_color_name"),
        ("get_render", {"job_id": "no-such-job"}, "404"),
    ],
)
def test_bad_arguments_are_tool_errors(stack: LocalStack, name: str, arguments: dict, says: str) -> None:
    (result,), _ = call(stack, [(name, arguments)])
    assert result.is_error
    assert says in result.content[0].text


def test_wrong_token_is_a_tool_error(stack: LocalStack) -> None:
    (result,), _ = call(stack, [("plan", {"prompt": "a cat"})], token="wrong-token")
    assert result.is_error
    assert "401" in result.content[0].text
