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


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _mcp(tmp_path, *options: str) -> tuple[subprocess.Popen, object]:
    nowhere = free_port()
    args = [sys.executable, "-m", "shared.cli", "mcp", "--url", f"http://127.0.0.1:{nowhere}",
            "--render-url", f"http://127.0.0.1:{nowhere}", "--http", *options]  # fmt: skip
    log = tmp_path / "mcp.log"
    with open(log, "wb") as out:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMOST_MCP_")}
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env), log


def test_refuses_to_serve_open_beyond_loopback(tmp_path) -> None:
    """Issue 26 §2: `--host 0.0.0.0` without a token served /mcp to anyone, acting with the service
    token; now it does not start, and says why (and so without an allowed Host list)."""
    for options, reason in (
        ((), "refusing to serve MCP on 0.0.0.0 without a token"),
        (("--http-token", "t" * 20), "needs --allowed-hosts"),
    ):
        process, log = _mcp(tmp_path, "--host", "0.0.0.0", "--port", str(free_port()), *options)
        try:
            assert process.wait(60) == 2, log.read_text()
        finally:  # a server that did start (the defect) must not outlive the test
            process.kill()
            process.wait(20)
        assert reason in log.read_text()


def test_beyond_loopback_the_token_and_the_allowed_hosts_are_required(tmp_path) -> None:
    port, token = free_port(), "mcp-endpoint-token-1234"
    process, log = _mcp(tmp_path, "--host", "0.0.0.0", "--port", str(port), "--http-token", token,
                        "--allowed-hosts", f"mcp.internal:{port}")  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"
    good = {**MCP_HEADERS, "Host": f"mcp.internal:{port}", "Authorization": f"Bearer {token}"}

    def listening() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            httpx.get(url, timeout=1)
            return True
        except httpx.HTTPError:
            return False

    try:
        wait_until(listening, 60, 0.2, "the MCP endpoint")
        anonymous = httpx.post(url, json=INITIALIZE, headers={**good, "Authorization": ""}, timeout=30)
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
        wrong = httpx.post(url, json=INITIALIZE, headers={**good, "Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401
        rebound = {**good, "Host": "evil.example", "Origin": "http://evil.example"}
        assert httpx.post(url, json=INITIALIZE, headers=rebound, timeout=30).status_code in (403, 421)
        foreign = {**good, "Origin": "http://evil.example"}
        assert httpx.post(url, json=INITIALIZE, headers=foreign, timeout=30).status_code == 403
        with httpx.stream("POST", url, json=INITIALIZE, headers=good, timeout=30) as answer:
            assert answer.status_code == 200
    finally:
        process.terminate()
        process.wait(20)
