"""``omost mcp``'s bad arguments (issue 27, point 4) read as the HTTP API's: one line per problem,
no pydantic ``input_value=...`` text. The SDK checks arguments before the tool runs, so the server
is built in process with unreachable service URLs: nothing is called."""

from __future__ import annotations

import anyio
import pytest
from mcp.server.mcpserver.exceptions import ToolError

from shared.cli.mcp_server import MCPConfig, build_server
from shared.cli.stack import free_port


def tool_error(name: str, arguments: dict[str, object]) -> str:
    nowhere = f"http://127.0.0.1:{free_port()}"
    server = build_server(MCPConfig(nowhere, nowhere))
    with pytest.raises(ToolError) as caught:
        anyio.run(server.call_tool, name, arguments)
    return str(caught.value)


def test_each_problem_is_one_line() -> None:
    text = tool_error("generate", {"prompt": "", "width": 63, "steps": 0})
    assert text.splitlines() == [
        "invalid argument prompt: string should have at least 1 character (got '')",
        "invalid argument width must be a multiple of 8 (got 63)",
        "invalid argument steps must be at least 1 (got 0)",
    ]


def test_a_bad_canvas_names_the_field_not_the_input() -> None:
    text = tool_error("render", {"canvas": {"global_description": {"description": "x"}}})
    assert text == "invalid argument canvas.global_description.HTML_web_color_name: field required"
    assert "input_value" not in text
