"""``omost mcp --http`` (streamable HTTP), as a process, with the SDK's client: it lists the tools,
and a service that cannot be reached is a tool error the agent can read, not a dead server."""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import httpx
from mcp import Client

from tests.support import free_port, wait_until


def test_streamable_http_serves_the_tools(tmp_path) -> None:
    port, nowhere = free_port(), free_port()  # nothing listens on `nowhere`
    args = [sys.executable, "-m", "shared.cli", "mcp", "--url", f"http://127.0.0.1:{nowhere}",
            "--render-url", f"http://127.0.0.1:{nowhere}", "--http", "--port", str(port)]
    log = tmp_path / "mcp.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))

    def listening() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
            return True
        except httpx.HTTPError:
            return False

    async def session() -> tuple[list[str], bool, str]:
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            result = await client.call_tool("plan", {"prompt": "a cat"})
            return names, result.is_error, result.content[0].text

    try:
        wait_until(listening, 60, 0.2, "the MCP endpoint")
        names, is_error, text = anyio.run(session)
    finally:
        process.terminate()
        process.wait(20)
    assert sorted(names) == ["edit_plan", "generate", "get_render", "plan", "render"]
    assert is_error
    assert f"cannot reach http://127.0.0.1:{nowhere}/v1/plans" in text
