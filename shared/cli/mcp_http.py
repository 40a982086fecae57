"""``omost mcp --http``: who may reach the MCP endpoint, and serving it.

Whoever reaches ``/mcp`` acts with the configured service token (plans, renders, that token's jobs),
so the endpoint has its own bearer token, required whenever it listens beyond loopback: the server
refuses to start open on such an interface. DNS-rebinding protection is always on: the Host header
must be one of the allowed hosts (loopback names on loopback, plus ``--allowed-hosts``; beyond
loopback the list must be given explicitly) and a browser's Origin one of the allowed origins, so a
web page cannot steer a local agent's server through a rebound name.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.service.exposure import is_loopback
from shared.service.problems import problem_body

LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")
LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")
TOKEN_VARIABLE = "OMOST_MCP_HTTP_TOKEN"


class ExposureRefused(ValueError):
    """The HTTP endpoint would be open, or unprotected against DNS rebinding, beyond loopback."""


@dataclass(frozen=True)
class HTTPExposure:
    host: str
    port: int
    token: str | None = None
    """What MCP clients must send as ``Authorization: Bearer``; required beyond loopback."""
    allowed_hosts: list[str] = field(default_factory=list)
    """Host header values (``name:port`` or ``name:*``) accepted besides the loopback names."""
    allowed_origins: list[str] = field(default_factory=list)
    """Origin header values accepted besides the loopback origins (absent Origin: always accepted)."""

    def security(self) -> TransportSecuritySettings:
        """The SDK's Host/Origin checks for this exposure; raises :class:`ExposureRefused`."""
        loopback = is_loopback(self.host)
        if not loopback and not self.token:
            raise ExposureRefused(
                f"refusing to serve MCP on {self.host} without a token: anyone who reaches it would act with "
                f"the service token. Set {TOKEN_VARIABLE} (or --http-token), or listen on 127.0.0.1"
            )
        if not loopback and not self.allowed_hosts:
            raise ExposureRefused(
                f"listening on {self.host} needs --allowed-hosts (OMOST_MCP_ALLOWED_HOSTS): the Host names "
                "clients use, e.g. mcp.example.org:443, so DNS-rebinding protection stays on"
            )
        hosts = [*(LOOPBACK_HOSTS if loopback else ()), *self.allowed_hosts]
        origins = [*(LOOPBACK_ORIGINS if loopback else ()), *self.allowed_origins]
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
        )


def split_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


class BearerGate:
    """401 for an HTTP request without ``Authorization: Bearer <token>`` (compared in constant time);
    everything else (the lifespan) passes through."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            body = json.dumps(problem_body(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')"))
            body_bytes = body.encode()
            headers = [
                (b"content-type", b"application/problem+json"),
                (b"www-authenticate", b"Bearer"),
                (b"content-length", str(len(body_bytes)).encode()),
            ]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body_bytes})
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and secrets.compare_digest(given.strip(), self.token)
        return False


def gated_app(app: ASGIApp, exposure: HTTPExposure) -> ASGIApp:
    return BearerGate(app, exposure.token) if exposure.token else app


def serve_http(server: MCPServer, exposure: HTTPExposure) -> None:
    """Serve ``server``'s streamable HTTP endpoint (``/mcp``) behind the token and the Host/Origin checks."""
    import uvicorn  # only this transport needs it

    app = server.streamable_http_app(transport_security=exposure.security(), host=exposure.host)
    uvicorn.run(gated_app(app, exposure), host=exposure.host, port=exposure.port, log_level="info")
