"""A real OpenAI-compatible chat server that is slow on purpose and counts what happens to its
requests, for the planner's admission and disconnect tests (run as a process on loopback).

Why not SmolLM2: the admission tests need several requests held open at once for a known time and
must see, from the server's side, that a request was abandoned. The embedded llama.cpp on 2 shared
cores answers in a time that varies with load, and does not report cancellations; this server
answers a fixed Omost canvas (the first fixture) after ``--delay`` seconds, streamed or not, and
``GET /stats`` says how many requests started, finished, and were abandoned by their client.

    python -m tests.planner.slow_llm --port 8123 --delay 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support import ChildProcess, free_port, python_module, wait_for_http

CODE = (Path(__file__).resolve().parents[1] / "fixtures" / "omost_outputs" / "01_dragon_battle.md").read_text()
CHUNKS = 20


def build_app(delay: float) -> Starlette:
    stats = {"started": 0, "finished": 0, "abandoned": 0, "in_flight": 0, "max_in_flight": 0}

    def begin() -> None:
        stats["started"] += 1
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])

    def completion(text: str) -> dict:
        return {
            "id": "slow", "object": "chat.completion", "created": int(time.time()), "model": "slow",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 100, "total_tokens": 110},
        }  # fmt: skip

    async def chat(request: Request) -> Response:
        body = await request.json()
        begin()
        if body.get("stream"):
            return StreamingResponse(_stream(), media_type="text/event-stream")
        try:
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if await request.is_disconnected():
                    stats["abandoned"] += 1
                    return Response(status_code=499)
                await asyncio.sleep(0.05)
            stats["finished"] += 1
            return JSONResponse(completion(CODE))
        finally:
            stats["in_flight"] -= 1

    async def _stream() -> AsyncIterator[str]:
        size = len(CODE) // CHUNKS + 1
        done = False
        try:
            for start in range(0, len(CODE), size):
                await asyncio.sleep(delay / CHUNKS)
                delta = {"choices": [{"index": 0, "delta": {"content": CODE[start : start + size]}}]}
                yield f"data: {json.dumps(delta)}\n\n"
            yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            yield "data: [DONE]\n\n"
            done = True
            stats["finished"] += 1
        finally:
            stats["in_flight"] -= 1
            if not done:
                stats["abandoned"] += 1  # starlette stops the generator when the client hangs up

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "slow", "object": "model"}]})

    async def get_stats(request: Request) -> JSONResponse:
        return JSONResponse(stats)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/stats", get_stats),
        ]
    )


@dataclass
class SlowLLM:
    """A running slow_llm process (see :func:`start_slow_llm`)."""

    url: str
    child: ChildProcess

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.url}/stats", timeout=5).json()

    def stop(self) -> None:
        self.child.stop()


def start_slow_llm(delay: float) -> SlowLLM:
    port = free_port()
    child = ChildProcess(python_module("tests.planner.slow_llm", "--port", str(port), "--delay", str(delay))).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/v1/models", timeout=30, process=child.process)
    except Exception:
        child.stop()
        raise
    return SlowLLM(url, child)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=3.0)
    args = parser.parse_args()
    uvicorn.run(build_app(args.delay), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
