"""The request body limit of both services: 413 before a big body is read, never a 50 MB echo."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.service.problems import PROBLEM_MEDIA_TYPE, problem_body


class BodyTooLarge(HTTPException):
    # An HTTPException so that FastAPI, which wraps other errors raised while reading the body in
    # a generic 400, passes it through unchanged (to the problem handler).
    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=f"request body is larger than the limit of {limit} bytes")


class BodySizeLimit:
    """Refuse bodies over ``max_bytes``: by Content-Length up front, else while they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False  # the server rejects malformed lengths itself
                if too_large:
                    error = BodyTooLarge(self.max_bytes)
                    body = problem_body(413, error.detail, instance=scope.get("path"))
                    response = JSONResponse(body, status_code=413, media_type=PROBLEM_MEDIA_TYPE)
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)
