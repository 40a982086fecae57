"""``omost mcp``: serve the Model Context Protocol (stdio, or streamable HTTP with --http).

Only the command lives here; the server (``shared.cli.mcp_server``) and the MCP SDK are imported when
the command runs, so every other ``omost`` command starts without them.
"""

from __future__ import annotations

from typing import Annotated

import typer


def mcp_command(
    url: Annotated[str, typer.Option("--url", envvar="OMOST_PLANNER_URL", help="The planner's base URL.")],
    render_url: Annotated[
        str, typer.Option("--render-url", envvar="OMOST_RENDER_URL", help="The render API's base URL.")
    ],
    token: Annotated[str | None, typer.Option("--token", envvar="OMOST_API_TOKEN", help="Bearer token.")] = None,
    http: Annotated[bool, typer.Option("--http", help="Streamable HTTP instead of stdio.")] = False,
    host: Annotated[str, typer.Option(help="With --http: the address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="With --http: the port (the endpoint is /mcp).")] = 8765,
    render_timeout: Annotated[float, typer.Option(help="Longest wait for a render, in seconds.")] = 900.0,
    http_token: Annotated[
        str | None,
        typer.Option(
            "--http-token",
            envvar="OMOST_MCP_HTTP_TOKEN",
            help="With --http: the bearer token MCP clients must send; required beyond loopback.",
        ),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            envvar="OMOST_MCP_ALLOWED_HOSTS",
            help="With --http: Host header values accepted besides loopback, comma-separated (name:port or "
            "name:*); required beyond loopback (DNS-rebinding protection).",
        ),
    ] = None,
    allowed_origins: Annotated[
        str | None,
        typer.Option(
            envvar="OMOST_MCP_ALLOWED_ORIGINS",
            help="With --http: browser Origins accepted besides loopback's, comma-separated.",
        ),
    ] = None,
) -> None:
    """Serve the planner and renderer to an agent over the Model Context Protocol."""
    try:
        from shared.cli.mcp_http import ExposureRefused, HTTPExposure, split_list
        from shared.cli.mcp_server import MCPConfig, run
    except ImportError as exc:
        raise typer.BadParameter(f"the MCP SDK is missing ({exc}): pip install 'omost-service[mcp]'") from None

    exposure = None
    if http:
        exposure = HTTPExposure(host, port, http_token, split_list(allowed_hosts), split_list(allowed_origins))
        try:
            exposure.security()  # refuse now, before anything starts
        except ExposureRefused as exc:
            raise typer.BadParameter(str(exc), param_hint="--host") from None
    run(MCPConfig(url, render_url, token, render_timeout), exposure=exposure)
