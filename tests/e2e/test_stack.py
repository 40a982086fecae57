"""The whole stack over HTTP, everything real: redis-server, the planner with SmolLM2 through the
embedded llama.cpp server, the render API and one worker with the tiny model, each its own process,
started by ``omost serve``."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from shared.cli.stack import free_port
from shared.client import OmostClient, RenderFailed
from shared.jobs import RenderRequest
from tests.support import RedisServer, StepGate, wait_for_http, wait_until

# SmolLM2 is small and fast, but a full 4096-token plan on two shared cores is minutes: bound it. A plan
# cut off by the bound still yields the canvas of its complete calls (the global description comes first),
# which is all these tests need (the other whole-stack tests, tests/cli and tests/integrations, give 350-400).
PLAN_TOKENS = 400
SMALL = {"width": 64, "height": 64, "steps": 3}


@dataclass
class Stack:
    planner_url: str
    render_url: str
    log: Path
    env: dict[str, str]
    """What a user's shell holds: the same cache folder as ``serve``, so commands find it."""
    gate: StepGate


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Stack]:
    """``omost serve`` as a user runs it, stopped with Ctrl-C (SIGINT) at the end."""
    redis = RedisServer().start()
    planner_port, render_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cache = tmp_path_factory.mktemp("cache")
    gate = StepGate(tmp_path_factory.mktemp("step-gate"))
    env = {
        **os.environ,
        "OMOST_RENDER_KEY_PREFIX": "e2e:",
        "OMOST_PLANNER_KEY_PREFIX": "e2e:",
        "XDG_CACHE_HOME": str(cache),
        "OMOST_RENDER_TEST_STEP_GATE": str(gate.folder),
    }
    args = [
        sys.executable,
        "-m",
        "shared.cli",
        "serve",
        "--planner-port",
        str(planner_port),
        "--render-port",
        str(render_port),
        "--redis-url",
        redis.url,
        "--model",
        str(tiny_model),
        "--workers",
        "1",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Stack(f"http://127.0.0.1:{planner_port}", f"http://127.0.0.1:{render_port}", log, env, gate)
    try:
        wait_for_http(f"{running.render_url}/readyz", timeout=300, process=process)
        wait_for_http(f"{running.planner_url}/readyz", timeout=300, process=process)
        wait_until(lambda: "playground" in log.read_text(), 30, what="the playground address printed")
        yield running
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(90)
        redis.stop()
    assert code == 0, log.read_text()[-3000:]
    assert f"playground http://127.0.0.1:{planner_port}/" in log.read_text()
    for url in (running.planner_url, running.render_url):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)


@pytest.fixture()
def client(stack: Stack) -> Iterator[OmostClient]:
    with OmostClient(stack.planner_url, stack.render_url, timeout=300) as c:
        yield c


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def test_prompt_to_plan_to_png(client: OmostClient) -> None:
    accepted = client.generate(
        "a cat and a dog on a sofa", render={**SMALL, "width": 96, "seed": 7}, max_new_tokens=PLAN_TOKENS, seed=1
    )
    assert accepted.canvas.global_description.description
    job = client.wait(accepted.urls.self_, timeout=300)
    assert job.status == "succeeded"
    assert job.seeds == [7]
    assert png_size(client.image(job, 0)) == (96, 64)


def test_editing_turn_keeps_the_conversation(client: OmostClient) -> None:
    first = client.plan("a red car in a city street", max_new_tokens=PLAN_TOKENS, seed=2)
    assert first.conversation_id
    second = client.plan("make the car blue", conversation_id=first.conversation_id, max_new_tokens=PLAN_TOKENS, seed=3)
    assert second.conversation_id == first.conversation_id
    assert second.canvas.global_description.description


def test_cancel_a_render(stack: Stack, client: OmostClient) -> None:
    canvas = client.plan("a lighthouse by the sea", max_new_tokens=PLAN_TOKENS, seed=4).canvas
    with stack.gate.holding_all(), pytest.raises(RenderFailed) as info:  # queued or held: never done first
        accepted = client.submit(RenderRequest(canvas=canvas, **SMALL))
        client.cancel(accepted.id)
        client.wait(accepted.id, timeout=120)
    assert info.value.job.status == "canceled"


def test_cli_generate_writes_the_file(stack: Stack, tmp_path: Path) -> None:
    """No --url: the command finds the running ``serve``, streams the plan and shows progress lines."""
    out = tmp_path / "cli.png"
    args = [
        sys.executable,
        "-m",
        "shared.cli",
        "generate",
        "a house on a hill",
        "-o",
        str(out),
        "--width",
        "64",
        "--height",
        "96",
        "--steps",
        "2",
        "--seed",
        "5",
        "--max-new-tokens",
        str(PLAN_TOKENS),
    ]
    result = subprocess.run(args, env=stack.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert png_size(out.read_bytes()) == (64, 96)
    assert "using the stack of `omost serve` (pid " in result.stderr
    assert " tokens/s" in result.stderr  # the planning progress line (stderr is a pipe: plain lines)
    assert "wrote" in result.stderr


def test_cli_edit_continues_on_the_remembered_planner(stack: Stack, tmp_path: Path) -> None:
    env = {**stack.env, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # no serve state here: only the memory
    plan = [
        sys.executable,
        "-m",
        "shared.cli",
        "plan",
        "a red car",
        "--url",
        stack.planner_url,
        "--max-new-tokens",
        str(PLAN_TOKENS),
        "--seed",
        "6",
    ]
    assert subprocess.run(plan, env=env, capture_output=True, text=True, timeout=300).returncode == 0
    edit = [sys.executable, "-m", "shared.cli", "edit", "make the car blue", "--max-new-tokens", str(PLAN_TOKENS)]
    result = subprocess.run(edit, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"using the planner of the last conversation, {stack.planner_url}" in result.stderr
    assert "canvas = Canvas()" in result.stdout
